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
        version_matrix!(@one v1_6 = 0; $($test => $function($($arg),*);)*);
        version_matrix!(@one v1_7 = 1; $($test => $function($($arg),*);)*);
        version_matrix!(@one v2_1 = 2; $($test => $function($($arg),*);)*);
    };
    (@one $version:ident = $index:literal; $($test:ident => $function:ident($($arg:expr),*);)*) => {
        mod $version {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[test]
                fn $test() {
                    super::$function(shimtrace_testkit::containerd::MATRIX[$index] $(, $arg)*)
                }
            )*
        }
    };
}

/// The modules `version_matrix!` declares stand for the versions of the matrix, in its order, and
/// for every one of them.
#[test]
fn the_version_modules_are_the_matrix() {
    let modules = ["v1_6", "v1_7", "v2_1"];
    let matrix = shimtrace_testkit::containerd::MATRIX;
    assert_eq!(modules.len(), matrix.len(), "{matrix:?}");
    for (module, version) in modules.into_iter().zip(matrix) {
        let release = module[1..].replace('_', ".") + ".";
        assert!(version.starts_with(&release), "{module} runs {version}");
    }
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
