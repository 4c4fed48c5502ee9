//! Test and coverage reports written by steps: JUnit XML, and coverage as LCOV or
//! Cobertura XML. A report that cannot be read gives a warning naming the file and the
//! problem; it never fails the run.
//!
//! Numbers from a report are checked before they reach a record: a non-finite or
//! negative figure (`time="NaN"`, `lines-valid="-1"`) is refused with a warning, and
//! every `f64` field of a stored report is (de)serialised through [`finite`], so a NaN
//! can never be written as JSON `null` and brick the record that holds it.

pub mod coverage;
pub mod junit;

/// A report attribute as a finite, non-negative number; `Err` says which and why.
pub(crate) fn number(what: &str, text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Ok(_) => Err(format!(
            "{what} \"{text}\" is not a finite, non-negative number"
        )),
        Err(_) => Err(format!("{what} \"{text}\" is not a number")),
    }
}

/// Serde for `f64` fields of stored records: a non-finite value is written as 0 (it
/// would otherwise become `null`, which no `f64` decodes), and `null` — as older
/// versions wrote a NaN — reads back as 0, so such a record is readable again.
pub mod finite {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &f64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(if value.is_finite() { *value } else { 0.0 })
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
        Ok(Option::<f64>::deserialize(d)?.unwrap_or(0.0))
    }

    /// The same for `Option<f64>`: a non-finite value is written as `None`.
    pub mod option {
        use serde::{Deserialize, Deserializer, Serializer};

        pub fn serialize<S: Serializer>(value: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
            match value.filter(|v| v.is_finite()) {
                Some(v) => s.serialize_some(&v),
                None => s.serialize_none(),
            }
        }

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
            Option::<f64>::deserialize(d)
        }
    }
}
