//! The status page: server-rendered HTML with inline SVG charts and no
//! JavaScript, readable with nothing but a browser. Every name that came
//! from a file or a request (models, features, segments, labels, reasons,
//! card values) is HTML-escaped.

use std::fmt::Write;

use super::status::{StatusSnapshot, VersionView};

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn psi_class(psi: f64) -> &'static str {
    if psi > 0.2 {
        "bad"
    } else if psi > 0.1 {
        "warn"
    } else {
        "ok"
    }
}

/// Live score shares (bars) against the reference shares (ticks), one bar
/// per score bin.
fn histogram(live: &[u64], reference: &[f64]) -> String {
    let total: u64 = live.iter().sum();
    let n = reference.len().max(1);
    let (w, h) = (320.0, 80.0);
    let bw = w / n as f64;
    let max = live
        .iter()
        .map(|&c| {
            if total == 0 {
                0.0
            } else {
                c as f64 / total as f64
            }
        })
        .chain(reference.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let mut svg = format!(
        "<svg class=\"hist\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" \
         aria-label=\"score histogram\">"
    );
    for i in 0..n {
        let share = match (live.get(i), total) {
            (Some(&c), t) if t > 0 => c as f64 / t as f64,
            _ => 0.0,
        };
        let bh = share / max * (h - 4.0);
        let x = i as f64 * bw;
        let _ = write!(
            svg,
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" fill=\"#4a7bd0\"/>",
            x + 1.0,
            h - bh,
            bw - 2.0
        );
        if let Some(r) = reference.get(i) {
            let y = h - r / max * (h - 4.0);
            let _ = write!(
                svg,
                "<line x1=\"{x:.1}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#d04a4a\" stroke-width=\"2\"/>",
                x + bw
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

fn pairs(map: &std::collections::BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{}&nbsp;{}", escape(k), escape(v)))
        .collect::<Vec<_>>()
        .join("<br>")
}

fn version_row(out: &mut String, model: &str, v: &VersionView, default: bool) {
    let _ = write!(
        out,
        "<tr class=\"{}\"><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
         <td>{}</td><td>{}</td></tr>",
        v.state,
        escape(model),
        v.version,
        if default { " (default)" } else { "" },
        v.state,
        escape(&v.labels.join(", ")),
        escape(&format!("{} / {}", v.task, v.format)),
        escape(v.trained_at.as_deref().unwrap_or("")),
        pairs(&v.metrics),
        pairs(&v.baselines),
    );
    if let Some(reason) = &v.reason {
        let _ = write!(
            out,
            "<tr class=\"failed\"><td></td><td colspan=\"7\">{}</td></tr>",
            escape(reason)
        );
    }
}

/// The whole page.
pub fn render(s: &StatusSnapshot) -> String {
    let mut out = String::from(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>segscore status</title><style>\
         body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}\
         td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top;font-size:.9em}\
         th{background:#f2f2f2}.failed{background:#fbe3e3}.retired{color:#888}\
         .ok{background:#e3f6e3}.warn{background:#fff4d6}.bad{background:#fbd0d0}\
         </style></head><body><h1>segscore</h1>",
    );
    out.push_str("<h2>Models</h2><table><tr><th>model</th><th>version</th><th>state</th><th>labels</th>\
                  <th>task / format</th><th>trained</th><th>card metrics</th><th>baselines</th></tr>");
    for m in &s.models {
        if m.versions.is_empty() {
            let _ = write!(
                out,
                "<tr class=\"failed\"><td>{}</td><td colspan=\"7\">no version</td></tr>",
                escape(&m.name)
            );
        }
        for v in &m.versions {
            version_row(&mut out, &m.name, v, m.default_version == Some(v.version));
        }
    }
    out.push_str("</table>");

    out.push_str("<h2>Segments</h2>");
    if s.segments.is_empty() {
        out.push_str("<p>No segment evaluated yet.</p>");
    } else {
        out.push_str("<table><tr><th>segment</th><th>rows</th><th>members</th><th>share</th>\
                      <th>window</th><th>change</th><th>entered</th><th>left</th><th>Jaccard</th></tr>");
        for w in &s.segments {
            let st = &w.stats;
            let b = st.baseline.as_ref();
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.1}%<br>\
                 <svg width=\"100\" height=\"8\"><rect width=\"{:.1}\" height=\"8\" fill=\"#4a7bd0\"/></svg></td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(&st.segment),
                st.rows,
                st.members,
                st.share * 100.0,
                st.share * 100.0,
                if w.complete { "complete" } else { "filling" },
                b.and_then(|b| b.change_ratio)
                    .map_or(String::new(), |r| format!("{:+.1}%", r * 100.0)),
                b.map_or(String::new(), |b| b.entered.to_string()),
                b.map_or(String::new(), |b| b.left.to_string()),
                b.map_or(String::new(), |b| format!("{:.3}", b.jaccard)),
            );
        }
        out.push_str("</table>");
    }

    out.push_str("<h2>Drift</h2>");
    if !s.drift_on {
        out.push_str("<p>Drift counting is off (<code>serve --drift off</code>).</p>");
    }
    for m in &s.models {
        for v in &m.versions {
            let Some(d) = &v.drift else { continue };
            let _ = write!(
                out,
                "<h3>{} v{} <small>({} rows in the window)</small></h3>\
                 <table><tr><th>feature</th><th>PSI</th><th>missing</th><th>missing at reference</th></tr>",
                escape(&m.name),
                v.version,
                d.rows
            );
            for f in &d.features {
                let (psi, class) = f.psi.map_or((String::from("–"), ""), |p| {
                    (format!("{p:.3}"), psi_class(p))
                });
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td class=\"{class}\">{psi}</td><td>{}</td><td>{:.1}%</td></tr>",
                    escape(&f.name),
                    f.missing_ratio()
                        .map_or(String::from("–"), |r| format!("{:.1}%", r * 100.0)),
                    f.reference_missing * 100.0
                );
            }
            let score = d.score_psi.map_or(String::from("–"), |p| format!("{p:.3}"));
            let _ = write!(
                out,
                "</table><p>Score PSI {score}: live shares (bars) against the reference (red ticks)</p>{}",
                histogram(&d.score_counts, &d.score_reference)
            );
        }
    }
    out.push_str("</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        monitor::{segments::SegmentWindow, status::ModelStatus},
        segments::stats::SegmentStats,
    };

    #[test]
    fn every_model_and_segment_is_listed_and_names_are_escaped() {
        let snapshot = StatusSnapshot {
            models: vec![
                ModelStatus {
                    name: "churn".into(),
                    default_version: Some(2),
                    versions: vec![
                        VersionView {
                            version: 2,
                            state: "serving",
                            drift: Some(crate::drift::DriftWindow {
                                rows: 10,
                                features: vec![crate::drift::FeatureWindow {
                                    name: "<b>x</b>".into(),
                                    counts: vec![5, 5],
                                    missing: 0,
                                    rows: 10,
                                    psi: Some(0.3),
                                    reference_missing: 0.0,
                                }],
                                score_counts: vec![3, 7],
                                score_edges: vec![0.5],
                                score_reference: vec![0.5, 0.5],
                                score_psi: Some(0.08),
                            }),
                            ..Default::default()
                        },
                        VersionView {
                            version: 1,
                            state: "failed",
                            reason: Some("golden set: row 3 <differs>".into()),
                            ..Default::default()
                        },
                    ],
                },
                ModelStatus {
                    name: "ltv&co".into(),
                    ..Default::default()
                },
            ],
            segments: vec![SegmentWindow {
                stats: SegmentStats {
                    segment: "\"vip\"".into(),
                    rows: 10,
                    members: 4,
                    errors: 0,
                    share: 0.4,
                    baseline: None,
                },
                complete: true,
            }],
            drift_on: true,
        };
        let html = render(&snapshot);
        assert!(
            html.contains("<td>churn</td><td>2 (default)</td>"),
            "{html}"
        );
        assert!(html.contains("ltv&amp;co") && !html.contains("ltv&co"));
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;") && !html.contains("<b>x</b>"));
        assert!(html.contains("&quot;vip&quot;"));
        assert!(html.contains("row 3 &lt;differs&gt;"));
        assert!(html.contains("class=\"bad\">0.300"));
        assert!(html.contains("<svg class=\"hist\""));
        assert!(!html.contains("<script"));
    }
}
