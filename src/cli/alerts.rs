//! `betcycle alerts list|rules|silence` and `betcycle probes list`: alerts and probes on a
//! server, through its API (token from `BETCYCLE_TOKEN`, an administrator's).

use super::Failure;
use super::project::{Api, ServerArgs, block_on};
use reqwest::Method;
use serde_json::json;
use std::collections::BTreeMap;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum AlertsVerb {
    /// The alerts (firing first).
    List,
    /// The alert rules with their settings.
    Rules,
    /// Hold back the notifications of matching alerts for a while.
    Silence {
        /// The rule (`betcycle alerts rules` lists them); every rule if left out.
        #[arg(long)]
        rule: Option<String>,
        /// The subject (`demo`, `demo/production`, a probe's name); every one if left out.
        #[arg(long)]
        subject: Option<String>,
        /// How long, such as 2h.
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why (kept with the silence and in the audit log).
        #[arg(long)]
        reason: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ProbesVerb {
    /// Every probe with its status and uptime.
    List,
}

fn percent(v: &serde_json::Value) -> String {
    v.as_f64().map_or("-".into(), |p| format!("{p:.2}%"))
}

impl AlertsVerb {
    pub fn run(
        self,
        server: ServerArgs,
        env: BTreeMap<String, String>,
    ) -> Result<ExitCode, Failure> {
        let api = Api::new(server.server, &env)?;
        block_on(async move {
            match self {
                AlertsVerb::List => {
                    let answer = api.send(Method::GET, "/api/v1/alerts", None).await?;
                    println!(
                        "{:<9} {:<9} {:<40} {:<26} SUMMARY",
                        "STATE", "SEVERITY", "ALERT", "SINCE"
                    );
                    for a in answer["alerts"].as_array().into_iter().flatten() {
                        println!(
                            "{:<9} {:<9} {:<40} {:<26} {}",
                            a["state"].as_str().unwrap_or_default(),
                            a["severity"].as_str().unwrap_or_default(),
                            a["key"].as_str().unwrap_or_default(),
                            a["since"].as_str().unwrap_or_default(),
                            a["summary"].as_str().unwrap_or_default()
                        );
                    }
                }
                AlertsVerb::Rules => {
                    let rules = api.send(Method::GET, "/api/v1/alert-rules", None).await?;
                    println!(
                        "{:<24} {:<8} {:<9} {:<8} DESCRIPTION",
                        "RULE", "ENABLED", "SEVERITY", "FOR"
                    );
                    for r in rules.as_array().into_iter().flatten() {
                        println!(
                            "{:<24} {:<8} {:<9} {:<8} {}",
                            r["name"].as_str().unwrap_or_default(),
                            if r["enabled"] == true { "yes" } else { "no" },
                            r["severity"].as_str().unwrap_or_default(),
                            format!("{}s", r["for_seconds"].as_u64().unwrap_or(0)),
                            r["description"].as_str().unwrap_or_default()
                        );
                    }
                }
                AlertsVerb::Silence {
                    rule,
                    subject,
                    duration,
                    reason,
                } => {
                    let body = json!({"rule": rule, "subject": subject, "duration": duration, "reason": reason});
                    let silence = api
                        .send(Method::POST, "/api/v1/silences", Some(body))
                        .await?;
                    println!(
                        "silence {} until {}",
                        silence["id"],
                        silence["until"].as_str().unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        })
    }
}

impl ProbesVerb {
    pub fn run(
        self,
        server: ServerArgs,
        env: BTreeMap<String, String>,
    ) -> Result<ExitCode, Failure> {
        let api = Api::new(server.server, &env)?;
        block_on(async move {
            let probes = api.send(Method::GET, "/api/v1/probes", None).await?;
            println!(
                "{:<20} {:<8} {:<9} {:<9} {:<9} TARGET",
                "PROBE", "STATUS", "24H", "7D", "30D"
            );
            for p in probes.as_array().into_iter().flatten() {
                println!(
                    "{:<20} {:<8} {:<9} {:<9} {:<9} {}",
                    p["name"].as_str().unwrap_or_default(),
                    p["status"].as_str().unwrap_or_default(),
                    percent(&p["uptime_24h"]),
                    percent(&p["uptime_7d"]),
                    percent(&p["uptime_30d"]),
                    p["target"].as_str().unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        })
    }
}
