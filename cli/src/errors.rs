//! How a failed command's error is printed: the message, then each cause it does not already say.

/// `error` and, on lines of their own, the causes its message does not already include (the
/// libraries' messages mostly quote their cause, which would otherwise be printed twice).
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str("\n  caused by: ");
            text.push_str(&cause);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    fn failed(context: &str) -> anyhow::Error {
        Err::<(), _>(std::io::Error::other("gone"))
            .context(context.to_string())
            .unwrap_err()
    }

    #[test]
    fn a_cause_the_message_quotes_is_not_repeated_and_others_are_kept() {
        assert_eq!(
            error_text(&failed("cannot read /etc/x: gone")),
            "cannot read /etc/x: gone"
        );
        assert_eq!(
            error_text(&failed("loading the store")),
            "loading the store\n  caused by: gone"
        );
    }
}
