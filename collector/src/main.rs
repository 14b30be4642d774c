//! `shimtrace`: the collector CLI.

fn main() {}
