fn main() {
    eprintln!("tally-sequencer: not built yet (issue 3)");
    std::process::exit(2);
}
