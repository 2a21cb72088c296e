//! The limiter against the simulator's server models, in virtual time
//! (`vsim.rs`), and the parts of `RateControl` that need no model.

use super::*;
use reqwest::header::HeaderValue;

pub(crate) fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[cfg(feature = "sim")]
mod models {
    use super::super::vsim::{Cell, Report, run};
    use crate::sim::models::ModelKind;

    /// The matrix (BENCHMARKS.md): every server model × replicas × API
    /// latency, limit 100/s dropping to 50/s at 10 s; then replicas joining
    /// and leaving (1 → 3 → 1); then 1,000/s behind a 250 ms API. Virtual
    /// time, so it measures the algorithm, not this machine. Prints a
    /// markdown table; VSIM_MODEL, VSIM_LAT and VSIM_LIMIT narrow it down.
    #[test]
    #[ignore]
    fn explore() {
        let only = std::env::var("VSIM_MODEL").ok();
        let lats: Vec<u64> = std::env::var("VSIM_LAT")
            .ok()
            .map_or(vec![0, 50, 250], |v| vec![v.parse().unwrap()]);
        let limit: u64 = std::env::var("VSIM_LIMIT")
            .ok()
            .map_or(100, |v| v.parse().unwrap());
        let models = [
            ModelKind::FixedClock,
            ModelKind::FixedFirst,
            ModelKind::Sliding,
            ModelKind::Gcra,
        ];
        let models: Vec<ModelKind> = models
            .into_iter()
            .filter(|m| only.as_deref().is_none_or(|o| o == m.to_string()))
            .collect();
        eprintln!(
            "| model | replicas | latency | case | steady utilisation | 429s after the first window | re-converged after the change |"
        );
        eprintln!("|---|---|---|---|---|---|---|---|");
        let row = |model: ModelKind, replicas: usize, lat: u64, case: &str, c: &Cell| {
            let r = run(c);
            let u = Report::utilisation(&r.steady(c, 2.0));
            let end_rate = r.rates.last().copied().unwrap_or(0.0);
            let model_seen = r.models.last().map_or("-", |m| m.as_str());
            let conv = c
                .changes
                .first()
                .and_then(|(at, _)| r.reconvergence(*at, c.duration, c.window));
            eprintln!(
                "| {model} | {replicas} | {lat} ms | {case} | {:.1} % | {:.2} % | {} | {model_seen} {end_rate:.0}/s |",
                u * 100.0,
                r.refused_share() * 100.0,
                conv.map_or("-".to_owned(), |s| format!("{s:.1} s"))
            );
            if std::env::var("VSIM_WINDOWS").is_ok() {
                for w in r.windows.iter().take(30) {
                    eprint!(
                        "{}/{}{} ",
                        w.allowed,
                        w.limit,
                        if w.refused > 0 {
                            format!("!{}", w.refused)
                        } else {
                            String::new()
                        }
                    );
                }
                eprintln!();
            }
        };
        for &model in &models {
            for replicas in [1usize, 3, 5] {
                for &lat in &lats {
                    let mut c = Cell::new(model, limit, lat);
                    c.changes = vec![(10.0, limit / 2)];
                    c.duration = 20.0;
                    c.clients = replicas;
                    c.fleet = replicas > 1;
                    row(
                        model,
                        replicas,
                        lat,
                        &format!("{limit}/s → {}/s at 10 s", limit / 2),
                        &c,
                    );
                }
            }
        }
        for &model in &models {
            for &lat in &lats {
                let mut c = Cell::new(model, limit, lat);
                c.duration = 30.0;
                c.clients = 1;
                c.fleet = true;
                c.membership = vec![(10.0, 3), (20.0, 1)];
                row(model, 3, lat, "1 → 3 → 1 replicas (10 s, 20 s)", &c);
            }
        }
        for &model in &models {
            let mut c = Cell::new(model, 1000, 250);
            c.duration = 20.0;
            row(model, 1, 250, "1,000/s", &c);
        }
    }
}
