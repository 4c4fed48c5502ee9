//! Line coverage from LCOV (`LF`/`LH` records, as written by cargo-llvm-cov, c8, gcov)
//! or Cobertura XML (`<coverage lines-valid lines-covered>` or `line-rate`).

use quick_xml::Reader;
use quick_xml::events::Event;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    pub lines_total: u64,
    pub lines_covered: u64,
    /// 0–100.
    pub percent: f64,
    /// `lcov` or `cobertura`.
    pub format: String,
}

/// Detects the format and parses it.
pub fn parse(text: &str) -> Result<Coverage, String> {
    if text.trim_start().starts_with('<') {
        cobertura(text)
    } else {
        lcov(text)
    }
}

fn coverage(total: u64, covered: u64, format: &str) -> Coverage {
    Coverage {
        lines_total: total,
        lines_covered: covered,
        percent: if total == 0 {
            0.0
        } else {
            covered as f64 * 100.0 / total as f64
        },
        format: format.into(),
    }
}

fn lcov(text: &str) -> Result<Coverage, String> {
    let (mut total, mut covered, mut records) = (0u64, 0u64, 0u64);
    for (n, line) in text.lines().enumerate() {
        let number = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("line {}: expected a number in \"{line}\"", n + 1))
        };
        if let Some(v) = line.strip_prefix("LF:") {
            total += number(v)?;
        } else if let Some(v) = line.strip_prefix("LH:") {
            covered += number(v)?;
        } else if line.starts_with("SF:") {
            records += 1;
        }
    }
    if records == 0 {
        return Err("not an LCOV report: no SF: records".into());
    }
    Ok(coverage(total, covered, "lcov"))
}

fn cobertura(xml: &str) -> Result<Coverage, String> {
    let mut reader = Reader::from_str(xml);
    loop {
        match reader
            .read_event()
            .map_err(|e| format!("invalid XML at byte {}: {e}", reader.error_position()))?
        {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "coverage" => {
                let get = |name: &str| {
                    e.attributes()
                        .flatten()
                        .find(|a| a.key.as_ref() == name)
                        .and_then(|a| {
                            a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .ok()
                                .map(|v| v.into_owned())
                        })
                };
                let valid = get("lines-valid").and_then(|v| v.parse::<u64>().ok());
                let covered = get("lines-covered").and_then(|v| v.parse::<u64>().ok());
                if let (Some(valid), Some(covered)) = (valid, covered) {
                    return Ok(coverage(valid, covered, "cobertura"));
                }
                let rate = get("line-rate").and_then(|v| v.parse::<f64>().ok()).ok_or(
                    "the <coverage> element has neither lines-valid/lines-covered nor line-rate",
                )?;
                return Ok(Coverage {
                    lines_total: 0,
                    lines_covered: 0,
                    percent: rate * 100.0,
                    format: "cobertura".into(),
                });
            }
            Event::Eof => return Err("not a Cobertura report: no <coverage> element".into()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lcov_sums_files() {
        let text = "TN:\nSF:src/a.rs\nDA:1,1\nLF:10\nLH:8\nend_of_record\nSF:src/b.rs\nLF:10\nLH:7\nend_of_record\n";
        let c = parse(text).unwrap();
        assert_eq!((c.lines_total, c.lines_covered), (20, 15));
        assert_eq!(c.percent, 75.0);
        assert!(parse("SF:x\nLF:ten\n").unwrap_err().contains("line 2"));
        assert!(parse("hello\n").unwrap_err().contains("not an LCOV report"));
    }

    #[test]
    fn cobertura_reads_counts_or_rate() {
        let xml = r#"<?xml version="1.0"?><coverage lines-valid="200" lines-covered="150" line-rate="0.75"><packages/></coverage>"#;
        assert_eq!(parse(xml).unwrap().percent, 75.0);
        let rate = r#"<coverage line-rate="0.5"></coverage>"#;
        assert_eq!(parse(rate).unwrap().percent, 50.0);
        assert!(parse("<report/>").unwrap_err().contains("no <coverage>"));
    }
}
