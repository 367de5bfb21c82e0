//! `FrameDecoder` fed an arbitrary byte stream in arbitrary chunks, with an
//! arbitrary maximum frame and buffer size: never panics, never stalls, and
//! gives exactly the frames (and the first error) that a one-shot reference
//! split of the whole stream gives.
//!
//! Input layout: byte 0 picks the maximum frame size and the buffer size,
//! byte 1 seeds the chunk sizes, the rest is the TCP byte stream.

use tally_wire::soup::{FrameDecoder, SoupError, LENGTH_PREFIX_SIZE, MAX_FRAME_BYTES};

/// What splitting the whole stream at once gives: the frames, then either
/// the error at the first bad length prefix or the number of bytes left
/// waiting for more.
fn reference(stream: &[u8], max_frame_bytes: usize) -> (Vec<&[u8]>, Result<usize, SoupError>) {
    let mut frames = Vec::new();
    let mut rest = stream;
    loop {
        let Some((length, after)) = rest.split_first_chunk::<LENGTH_PREFIX_SIZE>() else {
            return (frames, Ok(rest.len()));
        };
        let len = usize::from(u16::from_be_bytes(*length));
        if len == 0 {
            return (frames, Err(SoupError::EmptyFrame));
        }
        if len > max_frame_bytes {
            return (
                frames,
                Err(SoupError::FrameTooLarge {
                    len,
                    max: max_frame_bytes,
                }),
            );
        }
        if after.len() < len {
            return (frames, Ok(rest.len()));
        }
        frames.push(&after[..len]);
        rest = &after[len..];
    }
}

/// The check libFuzzer and the suite run on one input.
pub fn check(data: &[u8]) {
    let [config, seed, stream @ ..] = data else {
        return;
    };
    // Small maxima (1..=64) make oversize frames and buffer compaction
    // common; inputs with the top bit set use a large one (2 535..=65 535).
    let max_frame_bytes = if config & 0x80 == 0 {
        1 + usize::from(config & 0x3f)
    } else {
        MAX_FRAME_BYTES - usize::from(config & 0x3f) * 1000
    };
    // Half the inputs get the smallest legal buffer: one maximum frame and
    // its prefix, so every partial frame must move to the front.
    let mut decoder = if config & 0x40 == 0 {
        FrameDecoder::new(max_frame_bytes)
    } else {
        FrameDecoder::with_buffer_bytes(max_frame_bytes, LENGTH_PREFIX_SIZE + max_frame_bytes)
    };
    let (expected_frames, expected_end) = reference(stream, max_frame_bytes);

    let mut frames = Vec::new();
    let mut error = None;
    let mut rest = stream;
    let mut state = u32::from(*seed) | 0x100;
    'feed: while !rest.is_empty() {
        // xorshift32 chunk sizes 1..=97, sometimes the whole rest.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let chunk = if state % 16 == 0 {
            rest.len()
        } else {
            1 + (state % 97) as usize
        };
        let mut chunk = &rest[..chunk.min(rest.len())];
        rest = &rest[chunk.len()..];
        while !chunk.is_empty() {
            let room = decoder.room();
            let taken = decoder.extend(chunk);
            // It takes at most what `room` promises, and at least a maximum
            // frame's worth when the chunk and the room allow.
            assert!(taken <= room.min(chunk.len()));
            let floor = chunk.len().min(room);
            assert!(taken >= floor.min(LENGTH_PREFIX_SIZE + max_frame_bytes));
            chunk = &chunk[taken..];
            let mut drained = 0;
            loop {
                match decoder.next_frame() {
                    Ok(Some(frame)) => {
                        frames.push(frame.to_vec());
                        drained += 1;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        error = Some(e);
                        break 'feed;
                    }
                }
            }
            // Progress: a decoder that took nothing must have had nothing
            // to give either, or it is stuck.
            assert!(
                taken > 0 || drained > 0,
                "decoder stalled with {} bytes buffered",
                decoder.buffered()
            );
        }
    }
    if error.is_none() {
        if let Err(e) = decoder.next_frame() {
            error = Some(e);
        }
    }

    for (got, want) in frames.iter().zip(&expected_frames) {
        assert_eq!(got.as_slice(), *want);
    }
    match (expected_end, error) {
        (Ok(waiting), None) => {
            assert_eq!(frames.len(), expected_frames.len());
            assert_eq!(decoder.buffered(), waiting);
            assert_eq!(decoder.next_frame(), Ok(None));
        }
        (Err(want), Some(got)) => {
            assert_eq!(frames.len(), expected_frames.len());
            assert_eq!(got, want);
            // The error is sticky.
            assert_eq!(decoder.next_frame(), Err(want));
        }
        (want, got) => panic!(
            "reference ends with {want:?} after {} frames, decoder with {got:?} after {}",
            expected_frames.len(),
            frames.len()
        ),
    }
    // `clear` readies the decoder for a new connection.
    decoder.clear();
    assert_eq!(decoder.buffered(), 0);
    assert_eq!(decoder.next_frame(), Ok(None));
}
