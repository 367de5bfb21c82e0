//! The newcomer's first command. Not built yet: the applications land with
//! issue 4.
fn main() {
    println!("tally-demo: not built yet. The wire formats and runtime exist; run the tests with `cargo test --workspace`.");
}
