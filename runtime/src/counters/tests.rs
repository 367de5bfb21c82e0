use super::*;

#[test]
fn layout_offsets_match_the_documented_table() {
    assert_eq!(file_bytes(0), 128);
    assert_eq!(file_bytes(3), 128 + 3 * 64 + 3 * 64);
    assert_eq!(label_offset(2), 128 + 128);
    assert_eq!(value_offset(3, 0), 128 + 192);
    assert_eq!(value_offset(3, 2), 128 + 192 + 128);
    assert_eq!(value_offset(3, 1) % 64, 0);
}

#[test]
fn in_memory_counters_count() {
    let file = CounterFile::in_memory(&["a", "b"]);
    let a = file.counter(0);
    let b = file.counter_by_name("b").unwrap();
    a.increment();
    a.add(41);
    b.set(7);
    b.set_max(3);
    assert_eq!((a.get(), b.get()), (42, 7));
    b.set_max(9);
    b.set_max_shared(8);
    assert_eq!(b.get(), 9);
    b.add_shared(1);
    assert_eq!(b.get(), 10);
    assert!(file.counter_by_name("c").is_none());
    // The handle outlives the file object.
    drop(file);
    a.increment();
    assert_eq!(a.get(), 43);
}

#[test]
fn add_wraps() {
    let file = CounterFile::in_memory(&["x"]);
    let x = file.counter(0);
    x.set(u64::MAX);
    x.increment();
    assert_eq!(x.get(), 0);
}

#[test]
fn names_are_validated() {
    let long = "n".repeat(NAME_BYTES_MAX + 1);
    let many: Vec<String> = (0..=COUNTERS_MAX).map(|i| format!("c{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    for names in [
        vec![long.as_str()],
        vec![""],
        vec!["tab\there"],
        vec!["é"],
        vec!["dup", "dup"],
        many,
    ] {
        assert_eq!(
            validate("p", &names).unwrap_err().kind(),
            io::ErrorKind::InvalidInput,
            "{names:?}"
        );
    }
    assert!(validate(&"p".repeat(33), &["a"]).is_err());
    assert!(validate(&"p".repeat(32), &["n".repeat(63).as_str()]).is_ok());
}

#[test]
#[should_panic(expected = "out of range")]
fn counter_index_out_of_range_panics() {
    CounterFile::in_memory(&["a"]).counter(1);
}

#[test]
fn zero_padded_text() {
    assert_eq!(text_from_zero_padded(b"abc\0\0"), Some("abc".into()));
    assert_eq!(text_from_zero_padded(b"abc"), Some("abc".into()));
    assert_eq!(text_from_zero_padded(b"ab\0c"), None);
    assert_eq!(text_from_zero_padded(b"a\x01\0"), None);
}
