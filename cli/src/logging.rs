//! Logging for every subcommand, set up once: to stderr, because stdout carries the command's
//! output (`traces --json`, `report`, ...) and scripts parse it. The filter comes from
//! `SHIMTRACE_LOG` (the variable the shims read, which take a level only), else `RUST_LOG`, else
//! the command's default.

use std::io::IsTerminal;

use shimtrace_span::env::LOG_LEVEL;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The variables that set the filter, first set one wins.
const FILTER_VARS: [&str; 2] = [LOG_LEVEL, "RUST_LOG"];

/// Installs the stderr logger; `default` applies when no variable sets a filter.
pub fn init(default: LevelFilter) {
    let _ = logger(filter(default, |name| std::env::var(name).ok())).try_init();
}

/// The stderr logger, `filter` alone deciding what it writes.
fn logger(filter: Targets) -> impl tracing::Subscriber + Send + Sync {
    // Colour only for a person at a terminal: journald and test harnesses read plain text.
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    tracing_subscriber::registry().with(stderr).with(filter)
}

/// The filter of the first variable that is set and parses; a variable that does not parse is
/// reported and skipped. A filter is a level (`debug`) or `target=level` directives, comma-separated
/// (`shimtrace_collector=debug,warn`), as `RUST_LOG` takes them.
fn filter(default: LevelFilter, env: impl Fn(&str) -> Option<String>) -> Targets {
    for name in FILTER_VARS {
        let Some(value) = env(name).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        // `Targets` takes a bare word for a target name: a misspelt level would silence everything.
        let not_a_level = value
            .split(',')
            .map(str::trim)
            .find(|d| !d.contains('=') && d.parse::<LevelFilter>().is_err());
        let parsed = match not_a_level {
            Some(word) => Err(format!("{word:?} is not a level")),
            None => value.trim().parse::<Targets>().map_err(|e| e.to_string()),
        };
        match parsed {
            Ok(filter) => return filter,
            Err(e) => eprintln!(
                "warning: {name}={value:?} is not a log filter ({e}); set it to error, warn, info, debug or trace"
            ),
        }
    }
    Targets::new().with_default(default)
}

#[cfg(test)]
mod tests {
    use super::*;

    use shimtrace_testkit::env::from_pairs as env;
    use tracing_subscriber::{Layer, Registry};

    /// The most verbose level the filter from `default` and the variables `vars` lets through.
    fn max_level(default: LevelFilter, vars: &[(&str, &str)]) -> Option<LevelFilter> {
        Layer::<Registry>::max_level_hint(&filter(default, env(vars)))
    }

    #[test]
    fn shimtrace_log_wins_over_rust_log_and_the_default() {
        assert_eq!(
            max_level(
                LevelFilter::WARN,
                &[(LOG_LEVEL, "debug"), ("RUST_LOG", "error")]
            ),
            Some(LevelFilter::DEBUG)
        );
        assert_eq!(
            max_level(LevelFilter::WARN, &[("RUST_LOG", "error")]),
            Some(LevelFilter::ERROR)
        );
        assert_eq!(
            max_level(LevelFilter::INFO, &[(LOG_LEVEL, " ")]),
            Some(LevelFilter::INFO)
        );
    }

    #[test]
    fn target_directives_parse_as_rust_log_writes_them() {
        let targets = filter(
            LevelFilter::WARN,
            env(&[(LOG_LEVEL, "shimtrace_collector=debug,error")]),
        );
        assert!(targets.would_enable("shimtrace_collector::ingest", &tracing::Level::DEBUG));
        assert!(!targets.would_enable("shimtrace_collector::ingest", &tracing::Level::TRACE));
        assert!(!targets.would_enable("h2", &tracing::Level::WARN));
        assert!(targets.would_enable("h2", &tracing::Level::ERROR));
    }

    #[test]
    fn the_logger_writes_what_the_filter_lets_through() {
        use tracing::{enabled, Level};
        // Whether the logger built for `value` writes (trace, debug, info) events.
        let writes = |value: &str| {
            let logger = logger(filter(LevelFilter::WARN, env(&[(LOG_LEVEL, value)])));
            tracing::subscriber::with_default(logger, || {
                (
                    enabled!(Level::TRACE),
                    enabled!(Level::DEBUG),
                    enabled!(Level::INFO),
                )
            })
        };
        assert_eq!(writes("trace"), (true, true, true));
        assert_eq!(writes("debug"), (false, true, true));
        assert_eq!(writes("warn"), (false, false, false));
        assert_eq!(writes("nothing_here=trace,info"), (false, false, true));
    }

    #[test]
    fn a_filter_that_does_not_parse_falls_through() {
        assert_eq!(
            max_level(
                LevelFilter::WARN,
                &[(LOG_LEVEL, "debug=[unclosed"), ("RUST_LOG", "info")]
            ),
            Some(LevelFilter::INFO)
        );
        // A misspelt level is not taken for a target name (which would turn everything else off).
        for typo in ["degub", "shimtrace_collector=debug,wran"] {
            assert_eq!(
                max_level(LevelFilter::WARN, &[(LOG_LEVEL, typo)]),
                Some(LevelFilter::WARN),
                "{typo}"
            );
        }
    }
}
