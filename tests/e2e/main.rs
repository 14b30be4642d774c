//! shimtrace's end-to-end tests, one binary: the wrapper against real containerd 1.6/1.7/2.x, runc
//! and gVisor, the collector CLI, OTLP export to a receiver built from the official definitions, the
//! lab, and the benchmark's smoke run. Each module is one area; tests that start a containerd or a
//! shim clean it up by pid, also when they fail.

/// The tests run against each containerd of the version matrix (`testkit::containerd::MATRIX`):
/// `version_matrix! { test_name => function(args…); … }` declares modules `v1_6`, `v1_7` and
/// `v2_1`, each with a `#[test] fn test_name` that calls the calling module's
/// `function(version, args…)`.
macro_rules! version_matrix {
    ($($test:ident => $function:ident($($arg:expr),*);)*) => {
        const _: () = assert!(
            shimtrace_testkit::containerd::MATRIX.len() == 3,
            "version_matrix! declares a module per MATRIX version: add one"
        );
        version_matrix!(@one v1_6 = 0; $($test => $function($($arg),*);)*);
        version_matrix!(@one v1_7 = 1; $($test => $function($($arg),*);)*);
        version_matrix!(@one v2_1 = 2; $($test => $function($($arg),*);)*);
    };
    (@one $version:ident = $index:literal; $($test:ident => $function:ident($($arg:expr),*);)*) => {
        mod $version {
            #[allow(unused_imports)]
            use super::*;

            /// The module's name is the release of the version it runs.
            #[test]
            fn runs_the_release_its_name_says() {
                let release = stringify!($version)[1..].replace('_', ".") + ".";
                let version = shimtrace_testkit::containerd::MATRIX[$index];
                assert!(version.starts_with(&release), "{} runs {version}", stringify!($version));
            }
            $(
                #[test]
                fn $test() {
                    super::$function(shimtrace_testkit::containerd::MATRIX[$index] $(, $arg)*)
                }
            )*
        }
    };
}

/// The element of JSON array `array` whose `key` is `value`; none (or no array) fails the test,
/// showing what was there.
fn element_where<'a>(
    array: &'a serde_json::Value,
    key: &str,
    value: &str,
) -> &'a serde_json::Value {
    array
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {array}"))
        .iter()
        .find(|element| element[key] == value)
        .unwrap_or_else(|| panic!("no element with {key} {value:?} in {array}"))
}

mod bench_smoke;
mod cli_traces;
mod collector_e2e;
mod cri;
mod deploy_manifests;
mod docker;
mod hostile;
mod lab_cri;
mod lab_driver;
mod lab_image;
mod lab_install;
mod lab_interrupt;
mod lab_report;
mod matrix_bootstrap;
mod matrix_harness;
mod matrix_otlp;
mod matrix_protocol;
mod matrix_rust_runc_shim;
mod matrix_smoke;
mod otlp_export;
mod proxy_passthrough;
mod report_html;
mod robustness;
mod serve_ingest;
mod soak;
mod wrapper_bootstrap;
mod wrapper_e2e;
mod wrapper_gvisor;
