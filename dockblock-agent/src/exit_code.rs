//! The CLI's exit codes, in one place.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    /// Done.
    Ok = 0,
    /// The command was valid but could not be carried out (not root, not
    /// attached, unknown interface, kernel refused, table full).
    Failure = 1,
    /// The command line itself is wrong (clap errors, bad port specs).
    Usage = 2,
    /// `apply --detailed-exitcode`: the rule set changed (0: it did not).
    Changed = 3,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::ExitCode;

    #[test]
    fn codes_are_stable() {
        assert_eq!(ExitCode::Ok as u8, 0);
        assert_eq!(ExitCode::Failure as u8, 1);
        assert_eq!(ExitCode::Usage as u8, 2);
        assert_eq!(ExitCode::Changed as u8, 3);
    }
}
