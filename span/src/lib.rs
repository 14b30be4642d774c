//! shimtrace's shared vocabulary: the span record every crate reads and writes ([`SpanRecord`],
//! ids, attributes, trace context), the spool's format and reader ([`spool`]), how runtime names
//! map to binaries ([`naming`]), the clock spans are stamped with ([`clock`]) and the environment
//! variables shimtrace reads ([`env`]).

pub mod clock;
pub mod env;
pub mod naming;
mod record;
pub mod spool;

pub use record::*;
