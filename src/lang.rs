//! The languages of the mail reports and the web console, and their one
//! message catalogue, `src/i18n/messages.toml`: each message has its
//! English and French text side by side under one key, looked up with
//! rust-i18n's `t!(key, locale = lang.code(), var = value)` (`%{var}` in
//! the text). The command line and the logs stay in English.
//!
//! May import: nothing else of the crate.

use serde::{Deserialize, Serialize};

/// `language = "en" | "fr"`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    #[default]
    En,
    Fr,
}

impl Language {
    /// The catalogue's locale (also the HTML `lang`).
    pub fn code(self) -> &'static str {
        match self {
            Language::En => "en",
            Language::Fr => "fr",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rust_i18n::t;

    /// The `%{name}` variables of a message.
    fn variables(text: &str) -> Vec<&str> {
        let mut out: Vec<&str> = text.split("%{").skip(1).filter_map(|s| s.split('}').next()).collect();
        out.sort();
        out
    }

    #[test]
    fn every_message_has_both_languages_with_the_same_variables() {
        let catalogue: toml::Table = include_str!("i18n/messages.toml").parse().unwrap();
        fn walk(prefix: &str, table: &toml::Table, count: &mut usize) {
            for (key, value) in table {
                let key = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                let Some(t) = value.as_table() else { continue };
                if t.values().all(toml::Value::is_table) {
                    walk(&key, t, count);
                    continue;
                }
                let mut langs: Vec<&str> = t.keys().map(String::as_str).collect();
                langs.sort();
                assert_eq!(langs, ["en", "fr"], "{key}");
                let (en, fr) = (t["en"].as_str().unwrap(), t["fr"].as_str().unwrap());
                assert!(!en.trim().is_empty() && !fr.trim().is_empty(), "{key} is empty");
                assert_eq!(variables(en), variables(fr), "{key}: the variables differ");
                // Every key is found by the t! macro in both languages.
                for lang in [Language::En, Language::Fr] {
                    let got = t!(key.as_str(), locale = lang.code());
                    assert_ne!(got, key, "{key} is not in the compiled catalogue");
                }
                *count += 1;
            }
        }
        let mut count = 0;
        walk("", &catalogue, &mut count);
        assert!(count > 50, "{count} messages");
    }
}
