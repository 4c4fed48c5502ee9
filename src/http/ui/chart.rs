//! Charts drawn on the server as SVG geometry for the templates (no script, no inline
//! style: colours come from classes in app.css). A chart is a row of columns, one per
//! period: bars (stacked good and bad counts) or lines (one per series, gaps where a
//! period has no value). Each column carries a `<title>` with its figures, so a pointer
//! or a screen reader gets the numbers.

/// The drawing's height in SVG units (its width follows the number of columns).
pub const HEIGHT: f64 = 80.0;
/// Width of one column.
pub const STEP: f64 = 12.0;

/// One column of a bar chart.
pub struct Bar {
    pub x: String,
    pub ok_y: String,
    pub ok_h: String,
    pub bad_y: String,
    pub bad_h: String,
    pub title: String,
}

/// Stacked bars of (good, bad) counts per column.
pub struct Bars {
    pub label: String,
    pub top: String,
    pub bars: Vec<Bar>,
    pub width: String,
    pub first: String,
    pub last: String,
}

/// A series of a line chart: its class (`line-p50`) and name in the key.
pub struct Line {
    pub class: &'static str,
    pub name: &'static str,
    /// `polyline` point lists: one per unbroken stretch of values.
    pub segments: Vec<String>,
}

/// A point a pointer can rest on, with every series' value in its title.
pub struct Column {
    pub x: String,
    pub title: String,
}

/// Lines of values per column.
pub struct Lines {
    pub label: String,
    pub top: String,
    pub lines: Vec<Line>,
    pub columns: Vec<Column>,
    pub width: String,
    pub first: String,
    pub last: String,
}

fn num(v: f64) -> String {
    let text = format!("{v:.1}");
    text.trim_end_matches(".0").to_string()
}

/// Stacked bars: `values` are (column label, good, bad); `what` names the counts.
pub fn bars(label: &str, what: &str, values: &[(String, u64, u64)]) -> Bars {
    let top = values.iter().map(|v| v.1 + v.2).max().unwrap_or(0).max(1);
    let scale = HEIGHT / top as f64;
    let bars = values
        .iter()
        .enumerate()
        .map(|(i, (column, ok, bad))| {
            let x = i as f64 * STEP + 2.0;
            let ok_h = *ok as f64 * scale;
            let bad_h = *bad as f64 * scale;
            Bar {
                x: num(x),
                ok_y: num(HEIGHT - ok_h),
                ok_h: num(ok_h),
                bad_y: num(HEIGHT - ok_h - bad_h),
                bad_h: num(bad_h),
                title: format!("{column}: {ok} {what} succeeded, {bad} failed"),
            }
        })
        .collect();
    Bars {
        label: label.to_string(),
        top: top.to_string(),
        bars,
        width: num(values.len().max(1) as f64 * STEP),
        first: values.first().map(|v| v.0.clone()).unwrap_or_default(),
        last: values.last().map(|v| v.0.clone()).unwrap_or_default(),
    }
}

/// Lines: `columns` are the column labels; each series is (class, name, values), with
/// `show` writing a value for titles and the axis (`42 s`, `87 %`).
pub fn lines(
    label: &str,
    columns: &[String],
    series: &[(&'static str, &'static str, Vec<Option<f64>>)],
    show: impl Fn(f64) -> String,
) -> Lines {
    let top = series
        .iter()
        .flat_map(|s| s.2.iter().flatten().copied())
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top } else { 1.0 };
    let x_of = |i: usize| i as f64 * STEP + STEP / 2.0;
    let y_of = |v: f64| HEIGHT - v / top * (HEIGHT - 4.0) - 2.0;
    let lines = series
        .iter()
        .map(|(class, name, values)| {
            // Unbroken stretches of (x, y); a gap where a week has no value.
            let mut stretches: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
            for (i, v) in values.iter().enumerate() {
                match v {
                    Some(v) => stretches.last_mut().expect("one").push((x_of(i), y_of(*v))),
                    None => stretches.push(Vec::new()),
                }
            }
            let segments = stretches
                .into_iter()
                .filter(|points| !points.is_empty())
                .map(|points| match points[..] {
                    // A lone point is drawn as a short flat stroke so it shows.
                    [(x, y)] => format!("{},{y} {},{y}", num(x - 2.0), num(x + 2.0), y = num(y)),
                    _ => points
                        .iter()
                        .map(|(x, y)| format!("{},{}", num(*x), num(*y)))
                        .collect::<Vec<_>>()
                        .join(" "),
                })
                .collect();
            Line {
                class,
                name,
                segments,
            }
        })
        .collect();
    let points = columns
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let figures: Vec<String> = series
                .iter()
                .map(|(_, name, values)| {
                    let value = values.get(i).copied().flatten();
                    format!("{name} {}", value.map_or("–".to_string(), &show))
                })
                .collect();
            Column {
                x: num(i as f64 * STEP),
                title: format!("{column}: {}", figures.join(", ")),
            }
        })
        .collect();
    Lines {
        label: label.to_string(),
        top: show(top),
        lines,
        columns: points,
        width: num(columns.len().max(1) as f64 * STEP),
        first: columns.first().cloned().unwrap_or_default(),
        last: columns.last().cloned().unwrap_or_default(),
    }
}
