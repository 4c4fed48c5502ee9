//! Line (and, where the report has it, branch) coverage from LCOV (`LF`/`LH` records as
//! written by cargo-llvm-cov, c8, gcov — or counted from `DA`/`BRDA` lines when a file
//! has no summary) or Cobertura XML (`<coverage lines-valid lines-covered>` or
//! `line-rate`, and the `branches-*` / `branch-rate` counterparts).

use quick_xml::Reader;
use quick_xml::events::Event;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    pub lines_total: u64,
    pub lines_covered: u64,
    /// 0–100.
    #[serde(with = "super::finite")]
    pub percent: f64,
    /// Branches, when the report counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branches_total: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branches_covered: Option<u64>,
    /// 0–100, when the report has branch figures.
    #[serde(
        default,
        with = "super::finite::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub branch_percent: Option<f64>,
    /// `lcov` or `cobertura`.
    pub format: String,
    /// Each source file's line figures, as the report gives them (at most `MAX_FILES`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileCoverage>,
}

/// One source file's line coverage.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FileCoverage {
    pub path: String,
    pub lines_total: u64,
    pub lines_covered: u64,
}

impl FileCoverage {
    /// 0–100.
    pub fn percent(&self) -> f64 {
        percent(self.lines_covered, self.lines_total)
    }
}

/// Most files a run keeps per step's coverage: enough for a large project, bounded so one
/// report cannot make every run record huge.
pub const MAX_FILES: usize = 5000;

/// Detects the format and parses it.
pub fn parse(text: &str) -> Result<Coverage, String> {
    if text.trim_start().starts_with('<') {
        cobertura(text)
    } else {
        lcov(text)
    }
}

fn percent(covered: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        covered as f64 * 100.0 / total as f64
    }
}

impl Coverage {
    fn new(lines: (u64, u64), branches: Option<(u64, u64)>, format: &str) -> Coverage {
        Coverage {
            lines_total: lines.0,
            lines_covered: lines.1,
            percent: percent(lines.1, lines.0),
            branches_total: branches.map(|b| b.0),
            branches_covered: branches.map(|b| b.1),
            branch_percent: branches.map(|(total, covered)| percent(covered, total)),
            format: format.into(),
            files: Vec::new(),
        }
    }

    /// Several reports (one per package or per test binary) as one: their counts summed.
    /// A report that gives only a rate (Cobertura `line-rate`) counts by its rate alone
    /// when it is the only one.
    pub fn sum(reports: Vec<Coverage>) -> Option<Coverage> {
        if reports.len() <= 1 {
            return reports.into_iter().next();
        }
        let lines = reports
            .iter()
            .fold((0, 0), |(t, c), r| (t + r.lines_total, c + r.lines_covered));
        let branched: Vec<&Coverage> = reports
            .iter()
            .filter(|r| r.branches_total.is_some())
            .collect();
        let branches = (!branched.is_empty()).then(|| {
            branched.iter().fold((0, 0), |(t, c), r| {
                (
                    t + r.branches_total.unwrap_or(0),
                    c + r.branches_covered.unwrap_or(0),
                )
            })
        });
        let format = reports[0].format.clone();
        let mut sum = Coverage::new(lines, branches, &format);
        sum.files = reports
            .into_iter()
            .flat_map(|r| r.files)
            .take(MAX_FILES)
            .collect();
        Some(sum)
    }
}

/// One `SF:` … `end_of_record` section's figures.
#[derive(Default)]
struct LcovFile {
    path: String,
    summary_lines: Option<(u64, u64)>,
    da: (u64, u64),
    summary_branches: Option<(u64, u64)>,
    brda: Option<(u64, u64)>,
}

fn lcov(text: &str) -> Result<Coverage, String> {
    let (mut lines, mut branches, mut records) = ((0u64, 0u64), None::<(u64, u64)>, 0u64);
    let mut file: Option<LcovFile> = None;
    let mut files = Vec::new();
    let mut close = |f: LcovFile, lines: &mut (u64, u64), branches: &mut Option<(u64, u64)>| {
        // LF/LH when the file has them, otherwise what its DA lines say.
        let (t, c) = f.summary_lines.unwrap_or(f.da);
        lines.0 += t;
        lines.1 += c;
        if files.len() < MAX_FILES {
            files.push(FileCoverage {
                path: f.path,
                lines_total: t,
                lines_covered: c,
            });
        }
        if let Some((t, c)) = f.summary_branches.or(f.brda) {
            let b = branches.get_or_insert((0, 0));
            b.0 += t;
            b.1 += c;
        }
    };
    for (n, line) in text.lines().enumerate() {
        let number = |v: &str| {
            v.trim()
                .parse::<u64>()
                .map_err(|_| format!("line {}: expected a number in \"{line}\"", n + 1))
        };
        let line = line.trim_end();
        if let Some(path) = line.strip_prefix("SF:") {
            records += 1;
            let new = LcovFile {
                path: path.to_string(),
                ..LcovFile::default()
            };
            if let Some(f) = file.replace(new) {
                close(f, &mut lines, &mut branches);
            }
            continue;
        }
        if line == "end_of_record" {
            if let Some(f) = file.take() {
                close(f, &mut lines, &mut branches);
            }
            continue;
        }
        let Some(f) = file.as_mut() else { continue };
        if let Some(v) = line.strip_prefix("LF:") {
            f.summary_lines.get_or_insert((0, 0)).0 = number(v)?;
        } else if let Some(v) = line.strip_prefix("LH:") {
            f.summary_lines.get_or_insert((0, 0)).1 = number(v)?;
        } else if let Some(v) = line.strip_prefix("BRF:") {
            f.summary_branches.get_or_insert((0, 0)).0 = number(v)?;
        } else if let Some(v) = line.strip_prefix("BRH:") {
            f.summary_branches.get_or_insert((0, 0)).1 = number(v)?;
        } else if let Some(v) = line.strip_prefix("DA:") {
            // DA:<line>,<hits>[,<checksum>]
            let hits = v
                .split(',')
                .nth(1)
                .ok_or_else(|| format!("line {}: DA needs <line>,<hits> in \"{line}\"", n + 1))?;
            f.da.0 += 1;
            if number(hits)? > 0 {
                f.da.1 += 1;
            }
        } else if let Some(v) = line.strip_prefix("BRDA:") {
            // BRDA:<line>,<block>,<branch>,<taken or ->
            let taken = v.split(',').nth(3).ok_or_else(|| {
                format!(
                    "line {}: BRDA needs <line>,<block>,<branch>,<taken> in \"{line}\"",
                    n + 1
                )
            })?;
            let b = f.brda.get_or_insert((0, 0));
            b.0 += 1;
            if taken.trim() != "-" && number(taken)? > 0 {
                b.1 += 1;
            }
        }
    }
    if let Some(f) = file.take() {
        close(f, &mut lines, &mut branches);
    }
    if records == 0 {
        return Err("not an LCOV report: no SF: records".into());
    }
    if lines.1 > lines.0 {
        return Err(format!(
            "{} lines hit of {} found: a report cannot cover more lines than it has",
            lines.1, lines.0
        ));
    }
    let mut coverage = Coverage::new(lines, branches, "lcov");
    coverage.files = files;
    Ok(coverage)
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
                let count = |name: &str| -> Result<Option<u64>, String> {
                    get(name)
                        .map(|v| {
                            v.trim().parse::<u64>().map_err(|_| {
                                format!("<coverage {name}=\"{v}\">: expected a count of 0 or more")
                            })
                        })
                        .transpose()
                };
                let rate = |name: &str| -> Result<Option<f64>, String> {
                    get(name)
                        .map(|v| {
                            super::number(&format!("<coverage {name}>"), &v).and_then(|r| {
                                if r <= 1.0 {
                                    Ok(r)
                                } else {
                                    Err(format!("<coverage {name}=\"{v}\">: a rate is 0 to 1"))
                                }
                            })
                        })
                        .transpose()
                };
                let pair = |valid: &str, covered: &str| -> Result<Option<(u64, u64)>, String> {
                    match (count(valid)?, count(covered)?) {
                        (Some(t), Some(c)) if c > t => Err(format!(
                            "<coverage {covered}=\"{c}\" {valid}=\"{t}\">: more covered than there are"
                        )),
                        (Some(t), Some(c)) => Ok(Some((t, c))),
                        _ => Ok(None),
                    }
                };
                let branches = pair("branches-valid", "branches-covered")?;
                let branch_rate = rate("branch-rate")?;
                let mut coverage = match pair("lines-valid", "lines-covered")? {
                    Some(lines) => Coverage::new(lines, branches, "cobertura"),
                    None => {
                        let rate = rate("line-rate")?.ok_or(
                            "the <coverage> element has neither lines-valid/lines-covered nor line-rate",
                        )?;
                        let mut c = Coverage::new((0, 0), branches, "cobertura");
                        c.percent = rate * 100.0;
                        c
                    }
                };
                if coverage.branch_percent.is_none()
                    && let Some(r) = branch_rate
                    // Writers without branch data put branch-rate="0" with no counts.
                    && (r > 0.0 || branches.is_some())
                {
                    coverage.branch_percent = Some(r * 100.0);
                }
                coverage.files = cobertura_files(&mut reader)?;
                return Ok(coverage);
            }
            Event::Eof => return Err("not a Cobertura report: no <coverage> element".into()),
            _ => {}
        }
    }
}

/// Each `<class filename>`'s lines (its own `<lines><line hits>`, not those repeated under
/// `<methods>`), merged by file name in the order met.
fn cobertura_files(reader: &mut Reader<&[u8]>) -> Result<Vec<FileCoverage>, String> {
    let mut files: Vec<FileCoverage> = Vec::new();
    let mut class: Option<usize> = None;
    let mut in_methods = 0u32;
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("invalid XML at byte {}: {e}", reader.error_position()))?;
        match event {
            Event::Start(e) | Event::Empty(e) if e.local_name().as_ref() == "class" => {
                let name = e
                    .attributes()
                    .flatten()
                    .find(|a| a.key.as_ref() == "filename")
                    .and_then(|a| {
                        a.normalized_value(quick_xml::XmlVersion::Implicit1_0)
                            .ok()
                            .map(|v| v.into_owned())
                    });
                class = match name {
                    Some(path) => match files.iter().position(|f| f.path == path) {
                        Some(i) => Some(i),
                        None if files.len() < MAX_FILES => {
                            files.push(FileCoverage {
                                path,
                                lines_total: 0,
                                lines_covered: 0,
                            });
                            Some(files.len() - 1)
                        }
                        None => None,
                    },
                    None => None,
                };
            }
            Event::Start(e) if e.local_name().as_ref() == "methods" => in_methods += 1,
            Event::End(e) if e.local_name().as_ref() == "methods" => {
                in_methods = in_methods.saturating_sub(1)
            }
            Event::End(e) if e.local_name().as_ref() == "class" => class = None,
            Event::Start(e) | Event::Empty(e)
                if e.local_name().as_ref() == "line" && in_methods == 0 =>
            {
                let Some(i) = class else { continue };
                let hits = e
                    .attributes()
                    .flatten()
                    .find(|a| a.key.as_ref() == "hits")
                    .and_then(|a| a.value.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                files[i].lines_total += 1;
                if hits > 0 {
                    files[i].lines_covered += 1;
                }
            }
            Event::Eof => return Ok(files),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_keep_each_files_lines() {
        let lcov =
            "SF:src/a.rs\nLF:10\nLH:8\nend_of_record\nSF:src/b.rs\nDA:1,0\nDA:2,4\nend_of_record\n";
        let files: Vec<(String, u64, u64)> = super::parse(lcov)
            .unwrap()
            .files
            .into_iter()
            .map(|f| (f.path, f.lines_total, f.lines_covered))
            .collect();
        assert_eq!(
            files,
            [("src/a.rs".into(), 10, 8), ("src/b.rs".into(), 2, 1)]
        );
        // Cobertura: a class's own lines, not the copies under <methods>; two classes of
        // one file merge.
        let xml = r#"<coverage lines-valid="4" lines-covered="2"><packages><package><classes>
            <class filename="app/x.py"><methods><method><lines><line number="1" hits="1"/></lines></method></methods>
              <lines><line number="1" hits="1"/><line number="2" hits="0"/></lines></class>
            <class filename="app/x.py"><lines><line number="9" hits="3"/><line number="10" hits="0"/></lines></class>
            </classes></package></packages></coverage>"#;
        let c = super::parse(xml).unwrap();
        assert_eq!(c.files.len(), 1);
        assert_eq!((c.files[0].lines_total, c.files[0].lines_covered), (4, 2));
        assert_eq!(c.files[0].percent(), 50.0);
    }

    use super::*;

    #[test]
    fn lcov_sums_files() {
        let text = "TN:\nSF:src/a.rs\nDA:1,1\nLF:10\nLH:8\nend_of_record\nSF:src/b.rs\nLF:10\nLH:7\nend_of_record\n";
        let c = parse(text).unwrap();
        assert_eq!((c.lines_total, c.lines_covered), (20, 15));
        assert_eq!(c.percent, 75.0);
        assert_eq!(c.branches_total, None);
        assert!(parse("SF:x\nLF:ten\n").unwrap_err().contains("line 2"));
        assert!(parse("hello\n").unwrap_err().contains("not an LCOV report"));
    }

    #[test]
    fn lcov_without_summaries_counts_da_and_brda_lines() {
        let text =
            "SF:a.c\nDA:1,3\nDA:2,0\nDA:3,1\nDA:4,0\nBRDA:1,0,0,2\nBRDA:1,0,1,-\nend_of_record\n";
        let c = parse(text).unwrap();
        assert_eq!((c.lines_total, c.lines_covered, c.percent), (4, 2, 50.0));
        assert_eq!((c.branches_total, c.branches_covered), (Some(2), Some(1)));
        assert_eq!(c.branch_percent, Some(50.0));
        assert!(
            parse("SF:a\nLF:1\nLH:2\n")
                .unwrap_err()
                .contains("more lines")
        );
    }

    #[test]
    fn cobertura_reads_counts_or_rate_and_refuses_impossible_figures() {
        let xml = r#"<?xml version="1.0"?><coverage lines-valid="200" lines-covered="150" line-rate="0.75" branches-valid="10" branches-covered="4" branch-rate="0.4"><packages/></coverage>"#;
        let c = parse(xml).unwrap();
        assert_eq!(c.percent, 75.0);
        assert_eq!(c.branch_percent, Some(40.0));
        let rate = r#"<coverage line-rate="0.5" branch-rate="0"></coverage>"#;
        let c = parse(rate).unwrap();
        assert_eq!((c.percent, c.branch_percent), (50.0, None));
        assert!(parse("<report/>").unwrap_err().contains("no <coverage>"));
        for bad in [
            r#"<coverage line-rate="NaN"><packages/></coverage>"#,
            r#"<coverage line-rate="inf"/>"#,
            r#"<coverage line-rate="1.5"/>"#,
            r#"<coverage lines-valid="-1" lines-covered="0" line-rate="0.5"/>"#,
            r#"<coverage lines-valid="1" lines-covered="3"/>"#,
        ] {
            assert!(parse(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn sums_reports_and_never_stores_a_nan() {
        let a = Coverage::new((10, 5), None, "lcov");
        let b = Coverage::new((30, 15), Some((4, 1)), "lcov");
        let c = Coverage::sum(vec![a, b]).unwrap();
        assert_eq!((c.lines_total, c.lines_covered, c.percent), (40, 20, 50.0));
        assert_eq!(c.branch_percent, Some(25.0));
        let mut nan = c.clone();
        nan.percent = f64::NAN;
        nan.branch_percent = Some(f64::INFINITY);
        let json = serde_json::to_string(&nan).unwrap();
        let back: Coverage = serde_json::from_str(&json).unwrap();
        assert_eq!((back.percent, back.branch_percent), (0.0, None));
        // What older versions wrote for a NaN decodes again.
        let old = r#"{"lines_total":0,"lines_covered":0,"percent":null,"format":"cobertura"}"#;
        assert_eq!(serde_json::from_str::<Coverage>(old).unwrap().percent, 0.0);
    }
}
