//! A fixed environment, for tests of code that resolves its settings through a lookup function
//! instead of the process's own environment.

/// The environment made of `vars`' `(name, value)` pairs, as a lookup function.
pub fn from_pairs<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |k| {
        vars.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    }
}
