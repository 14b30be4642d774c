//! Command lines parsed the way shimtrace's binaries parse them, for tests that call a subcommand's
//! library entry point (`shimtrace_lab::run`, `install`) with real arguments.

/// Parses `args` (without the program and subcommand names) into a subcommand's `clap::Args`
/// struct, e.g. `parse_args::<LabArgs>(&["--runs", "1"])`; panics with clap's message if they do
/// not parse.
pub fn parse_args<A: clap::Args>(args: &[&str]) -> A {
    let command = A::augment_args(clap::Command::new("shimtrace"));
    let matches = command
        .try_get_matches_from(std::iter::once("shimtrace").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("`{}` does not parse: {e}", args.join(" ")));
    A::from_arg_matches(&matches)
        .unwrap_or_else(|e| panic!("`{}` does not parse: {e}", args.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, clap::Args)]
    struct Demo {
        #[arg(long, default_value_t = 3)]
        runs: u32,
        #[arg(long, value_delimiter = ',')]
        only: Vec<String>,
    }

    #[test]
    fn parses_flags_and_defaults() {
        let demo: Demo = parse_args(&["--only", "runc,runsc"]);
        assert_eq!((demo.runs, demo.only.len()), (3, 2));
        let demo: Demo = parse_args(&["--runs", "1"]);
        assert_eq!(demo.runs, 1);
    }

    #[test]
    #[should_panic(expected = "does not parse")]
    fn bad_arguments_panic_with_the_reason() {
        let _: Demo = parse_args(&["--runs", "many"]);
    }
}
