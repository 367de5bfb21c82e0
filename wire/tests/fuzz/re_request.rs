//! `ReRequest::parse` on arbitrary datagrams: never panics, accepts exactly
//! 20 bytes, and the fields re-encode to the same bytes.

use tally_wire::mold::{MoldError, ReRequest};

/// The check libFuzzer and the suite run on one input.
pub fn check(data: &[u8]) {
    match ReRequest::parse(data) {
        Ok(request) => {
            assert_eq!(data.len(), ReRequest::SIZE);
            let again = ReRequest::new(
                request.session(),
                request.sequence.get(),
                request.count.get(),
            );
            assert_eq!(again.as_bytes(), data);
        }
        Err(MoldError::ReRequestLength { len }) => {
            assert_eq!(len, data.len());
            assert_ne!(len, ReRequest::SIZE);
        }
        Err(e) => panic!("unexpected error {e:?}"),
    }
}
