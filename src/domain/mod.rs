//! Validated input types: once you hold a `Username`, `Email`, `DisplayName`, `Phone` or `NewPassword`, it is valid;
//! the identifiers and API-key scopes that are kept typed into the store.

mod ids;
mod scope;
mod user;

use unicode_normalization::UnicodeNormalization;

pub use ids::{ApiKeyId, SessionId, UserId, UserUid};
pub use scope::Scope;
use serde::Serialize;
pub use user::{Role, User};
use utoipa::ToSchema;

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// The field errors of one request, collected so the client sees all of them at once.
#[derive(Debug, Default)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl ValidationErrors {
    /// Keeps the value if it parsed, records the error under `field` otherwise.
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(message) => {
                self.0.push(FieldError::new(field, message));
                None
            }
        }
    }

    pub fn push(&mut self, field: &str, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    pub fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}

/// 6–18 characters of `[A-Za-z0-9._-]`; case is kept for display, uniqueness ignores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim();
        let len = s.chars().count();
        if !(6..=18).contains(&len) {
            return Err("Username must be 6 to 18 characters long.".into());
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err("Username may contain only letters A–Z, digits, '.', '_' and '-'.".into());
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A valid address of at most 200 characters, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// The WHATWG "valid e-mail address" grammar (what browsers accept), plus a dotted domain.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s = raw.trim().to_lowercase();
        let invalid = || "Email must be a valid address.".to_owned();
        if s.chars().count() > 200 {
            return Err("Email must be at most 200 characters long.".into());
        }
        let (local, domain) = s.rsplit_once('@').ok_or_else(invalid)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && local
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".!#$%&'*+/=?^_`{|}~-".contains(c))
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..");
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !l.starts_with('-')
                    && !l.ends_with('-')
            })
            && labels
                .last()
                .is_some_and(|tld| tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic()));
        if local_ok && domain_ok {
            Ok(Self(s))
        } else {
            Err(invalid())
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// 1–110 characters after trimming: letters of any script, spaces, apostrophes, hyphens, periods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let s: String = raw.trim().nfc().collect();
        let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
        let len = s.chars().count();
        if !(1..=110).contains(&len) {
            return Err("Name must be 1 to 110 characters long.".into());
        }
        let allowed = |c: char| {
            c.is_alphabetic()
                || c == ' '
                || matches!(c, '\'' | '’' | '-' | '.')
                // Combining marks (Devanagari vowel signs, Arabic harakat, …) belong to letters.
                || is_combining_mark(c)
        };
        if !s.chars().all(allowed) {
            return Err(
                "Name may contain only letters, spaces, apostrophes, hyphens and periods.".into(),
            );
        }
        if !s.chars().any(char::is_alphabetic) {
            return Err("Name must contain at least one letter.".into());
        }
        Ok(Self(s))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_combining_mark(c: char) -> bool {
    unicode_normalization::char::is_combining_mark(c)
}

/// Optional phone number: at most 15 characters of digits, spaces, `+`, `-`, `(`, `)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phone(String);

impl Phone {
    /// An empty (or all-space) string means "no phone". Spaces around the number are
    /// dropped; the length counts them, as the OpenAPI schema's `maxLength` does.
    pub fn parse(raw: &str) -> Result<Option<Self>, String> {
        if raw.chars().count() > 15 {
            return Err("Phone must be at most 15 characters long.".into());
        }
        let s = raw.trim_matches(' ');
        if s.is_empty() {
            return Ok(None);
        }
        let digits = s.chars().filter(char::is_ascii_digit).count();
        if digits < 4 || !s.chars().all(|c| c.is_ascii_digit() || " +-()".contains(c)) {
            return Err("Phone must be a phone number (digits, spaces, + - ( )).".into());
        }
        Ok(Some(Self(s.to_owned())))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password accepted for a new credential: 8–128 characters, zxcvbn score ≥ 3.
pub struct NewPassword(String);

/// How many leading characters of a new password zxcvbn scores.
pub const STRENGTH_PREFIX: usize = 40;
/// How many characters of each user input (username, name, email) zxcvbn is given.
pub const USER_INPUT_MAX: usize = 200;
/// How many distinct look-alike characters zxcvbn tries as letters.
pub const LOOKALIKES_MAX: usize = 6;

/// The characters zxcvbn reads as letters (its l33t table: `4` and `@` for a, `1` for i or l…).
const LOOKALIKES: &str = "4@8({[<36917|!0$5+%2";

/// What zxcvbn is given of a password: a bounded prefix with a bounded set of look-alikes.
fn scored_part(raw: &str) -> String {
    let kept = kept_lookalikes(raw);
    with_lookalikes(raw.chars().take(STRENGTH_PREFIX), &kept)
}

/// The first [`LOOKALIKES_MAX`] distinct look-alikes of the scored prefix: the ones zxcvbn
/// keeps; any other is scored as a plain symbol.
fn kept_lookalikes(raw: &str) -> Vec<char> {
    let mut kept: Vec<char> = Vec::with_capacity(LOOKALIKES_MAX);
    for c in raw.chars().take(STRENGTH_PREFIX) {
        if kept.len() == LOOKALIKES_MAX {
            break;
        }
        if LOOKALIKES.contains(c) && !kept.contains(&c) {
            kept.push(c);
        }
    }
    kept
}

/// `text` with every look-alike not in `kept` replaced by a symbol zxcvbn does not read as a
/// letter. The user inputs go through the same mapping as the password, so a password that
/// repeats the username is still recognised as the username.
fn with_lookalikes(text: impl Iterator<Item = char>, kept: &[char]) -> String {
    text.map(|c| {
        if LOOKALIKES.contains(c) && !kept.contains(&c) {
            '#'
        } else {
            c
        }
    })
    .collect()
}

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewPassword([redacted])")
    }
}

impl NewPassword {
    /// `user_inputs` are the account's own words (username, name, email), which make a
    /// password guessable when it contains them.
    ///
    /// zxcvbn's cost grows steeply with length and, above all, with the number of distinct
    /// look-alike characters (`4@1|7$…`, each a guess at a letter): 128 of them cost about a
    /// second of CPU. So only the first [`STRENGTH_PREFIX`] characters are scored (more
    /// characters only add strength: a prefix strong enough makes the whole strong enough),
    /// look-alikes beyond the first [`LOOKALIKES_MAX`] distinct ones are scored as a plain
    /// symbol, and user inputs are cut to [`USER_INPUT_MAX`]. That costs a few milliseconds
    /// at most: still CPU work, which callers run off the async workers.
    pub fn parse(raw: &str, user_inputs: &[&str]) -> Result<Self, String> {
        let len = raw.chars().count();
        if !(8..=128).contains(&len) {
            return Err("Password must be 8 to 128 characters long.".into());
        }
        let kept = kept_lookalikes(raw);
        let cut = |s: &str| with_lookalikes(s.chars().take(USER_INPUT_MAX), &kept);
        let mut owned: Vec<String> = user_inputs.iter().map(|s| cut(s)).collect();
        // The parts of an email address are guessable on their own.
        for input in user_inputs {
            if let Some((local, domain)) = input.split_once('@') {
                owned.push(cut(local));
                owned.push(cut(domain));
            }
        }
        let inputs: Vec<&str> = owned.iter().map(String::as_str).collect();
        let judged = scored_part(raw);
        let entropy = zxcvbn::zxcvbn(&judged, &inputs);
        if u8::from(entropy.score()) >= 3 {
            return Ok(Self(raw.to_owned()));
        }
        let mut message = String::from("Password is too easy to guess.");
        if let Some(feedback) = entropy.feedback() {
            if let Some(warning) = feedback.warning() {
                message.push(' ');
                message.push_str(&warning.to_string());
            }
            for suggestion in feedback.suggestions() {
                message.push(' ');
                message.push_str(&suggestion.to_string());
            }
        }
        Err(message)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strength_is_judged_on_a_bounded_part() {
        let hostile: String = "4@8({[<3&69!|170$5+%2".chars().cycle().take(128).collect();
        let part = scored_part(&hostile);
        assert_eq!(part.chars().count(), STRENGTH_PREFIX);
        let distinct: std::collections::HashSet<char> =
            part.chars().filter(|c| LOOKALIKES.contains(*c)).collect();
        assert_eq!(distinct.len(), LOOKALIKES_MAX);
        assert_eq!(scored_part("p@ssw0rd"), "p@ssw0rd");
        // Weak stays weak, strong stays strong.
        assert!(NewPassword::parse("p@ssw0rd1", &[]).is_err());
        assert!(NewPassword::parse(&hostile, &[]).is_ok());
        assert!(NewPassword::parse("correct horse battery staple 1|7", &[]).is_ok());
        // A username with more distinct look-alikes than are kept is still recognised.
        let username = "u9f3a81c2d7e4b50";
        assert!(NewPassword::parse(username, &[username]).is_err());
    }

    #[test]
    fn usernames() {
        for ok in ["alice_1", "Bob.Smith", "a-b-c-d", "x12345678901234567"] {
            assert!(Username::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "short",
            "x123456789012345678",
            "has space",
            "émile12",
            "bob@home",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn emails_are_lowercased_and_checked() {
        assert_eq!(
            Email::parse(" Alice@Example.COM ").unwrap().as_str(),
            "alice@example.com"
        );
        let long = format!("{}@example.com", "a".repeat(60)).repeat(1);
        assert!(Email::parse(&long).is_ok());
        for bad in [
            "plain",
            "@example.com",
            "a@",
            "a@localhost",
            "a..b@example.com",
            "a@-x.com",
            "a b@example.com",
            "a@example.c0m",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        let too_long = format!("{}@{}.com", "a".repeat(64), "b".repeat(140));
        assert!(Email::parse(&too_long).is_err());
    }

    #[test]
    fn names_in_any_script() {
        for ok in [
            "Zoë O'Brien-Smith",
            "José Ramírez Jr.",
            "李小龙",
            "Иван Петров",
            "محمد علي",
            "देवनागरी नाम",
            "  Spaced   Out  ",
        ] {
            assert!(DisplayName::parse(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            DisplayName::parse("  Spaced   Out  ").unwrap().as_str(),
            "Spaced Out"
        );
        for bad in [
            "",
            "   ",
            "R2-D2",
            "<script>",
            "a".repeat(111).as_str(),
            "--",
        ] {
            assert!(DisplayName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn phones() {
        assert!(Phone::parse("").unwrap().is_none());
        assert!(Phone::parse("   ").unwrap().is_none());
        assert_eq!(
            Phone::parse(" 5551234 ").unwrap().unwrap().as_str(),
            "5551234"
        );
        assert!(
            Phone::parse("\t").is_err(),
            "only spaces are trimmed, as the schema allows"
        );
        assert!(
            Phone::parse("  555-123-456789  ").is_err(),
            "the length counts the spaces"
        );
        assert!(Phone::parse("+1 (555) 123-45").unwrap().is_some());
        assert!(Phone::parse("+1 555 123 45678").is_err());
        assert!(Phone::parse("call me").is_err());
    }

    #[test]
    fn passwords_are_judged_by_guessability_not_composition() {
        assert!(NewPassword::parse("correct horse battery staple", &[]).is_ok());
        assert!(NewPassword::parse("short", &[]).is_err());
        assert!(NewPassword::parse(&"x".repeat(129), &[]).is_err());
        let weak = NewPassword::parse("password123", &[]).unwrap_err();
        assert!(
            weak.len() > "Password is too easy to guess.".len(),
            "{weak}"
        );
        // Strong on its own, weak when it is the user's own username.
        assert!(NewPassword::parse("quixotic_zebra91", &[]).is_ok());
        assert!(NewPassword::parse("quixotic_zebra91", &["quixotic_zebra91"]).is_err());
    }

    mod properties {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn usernames_of_the_allowed_alphabet_and_length_parse(s in "[A-Za-z0-9._-]{6,18}") {
                let parsed = Username::parse(&s).unwrap();
                prop_assert_eq!(parsed.as_str(), s.as_str());
            }

            #[test]
            fn usernames_with_any_other_character_do_not(
                prefix in "[a-z]{3,8}", bad in "[^A-Za-z0-9._\\-\\s]", suffix in "[a-z]{3,8}"
            ) {
                let candidate = format!("{prefix}{bad}{suffix}");
                prop_assert!(Username::parse(&candidate).is_err());
            }

            #[test]
            fn emails_are_lower_cased_and_parsing_is_idempotent(s in "[A-Za-z0-9._%+-]{1,20}@[A-Za-z0-9-]{1,20}\\.[A-Za-z]{2,6}") {
                if let Ok(email) = Email::parse(&s) {
                    prop_assert_eq!(email.as_str(), email.as_str().to_lowercase());
                    prop_assert_eq!(Email::parse(email.as_str()).unwrap(), email.clone());
                    prop_assert!(email.as_str().chars().count() <= 200);
                }
            }

            #[test]
            fn display_names_are_bounded_trimmed_and_stable(s in "\\PC{0,130}") {
                if let Ok(name) = DisplayName::parse(&s) {
                    let n = name.as_str();
                    prop_assert!((1..=110).contains(&n.chars().count()));
                    prop_assert_eq!(n.trim(), n);
                    prop_assert_eq!(DisplayName::parse(n).unwrap(), name.clone());
                }
            }
        }
    }
}
