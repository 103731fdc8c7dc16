//! What an answer's upstream requests cost: one [`UpstreamRequest`] per request, failed
//! ones (a 429 before a retry) and continuations included, and the answer's usage as the
//! client sees it.
//!
//! The client's `usage` counts what it sent and received: the prompt of the first request
//! that answered, and the completion tokens of every request (a continuation's new text
//! only). What was paid is per request: a continuation's prompt holds the partial answer,
//! and a cut request is paid although it reported nothing. A request that ends without
//! a usage report (most cut streams) is estimated — the pieces it streamed, and the
//! prompt's characters / 4 — and marked `estimated`.

use providers::{ChatRequest, Delta};
use streamlog::{Record, UpstreamRequest};

use crate::config::Price;
use crate::router::{Attempt, Model, Target};

/// The upstream requests of one answer.
#[derive(Debug, Default)]
pub struct Calls {
    requests: Vec<UpstreamRequest>,
    prices: Vec<Option<Price>>,
    /// The request serving the answer now: whether it reported usage, and the pieces
    /// (text and tool-call deltas) it streamed.
    open: Option<Open>,
    /// The prompt's size in characters / 4, for estimates.
    prompt_estimate: u64,
}

#[derive(Debug)]
struct Open {
    reported: bool,
    pieces: u64,
}

impl Calls {
    /// The calls of an answer to `request`.
    pub fn new(request: &ChatRequest) -> Self {
        let characters: usize = request
            .messages
            .iter()
            .map(|message| message.text().chars().count())
            .sum();
        Self {
            prompt_estimate: (characters as u64).div_ceil(4),
            ..Self::default()
        }
    }

    /// A request whose writer stopped before it ended (a takeover found it): `pieces`
    /// pieces were streamed from `target`'s `model`.
    pub fn lost(&mut self, target: String, model: String, pieces: u32) {
        self.requests.push(UpstreamRequest {
            target,
            model,
            status: "lost".into(),
            prompt_tokens: self.prompt_estimate,
            completion_tokens: u64::from(pieces),
            estimated: true,
            ..UpstreamRequest::default()
        });
        self.prices.push(None);
    }

    /// Requests that failed before their first token.
    pub fn failed(&mut self, model: &Model, attempts: Vec<Attempt>) {
        for attempt in attempts {
            let Some(target) = model.targets.get(attempt.target) else {
                continue;
            };
            self.requests.push(UpstreamRequest {
                target: target.name.clone(),
                model: target.upstream_model.clone(),
                status: attempt.status,
                ..UpstreamRequest::default()
            });
            self.prices.push(target.price);
        }
    }

    /// A request of `target` produced its first delta: the record that says so.
    pub fn begin(&mut self, target: &Target) -> Record {
        self.requests.push(UpstreamRequest {
            target: target.name.clone(),
            model: target.upstream_model.clone(),
            status: "open".into(),
            ..UpstreamRequest::default()
        });
        self.prices.push(target.price);
        self.open = Some(Open {
            reported: false,
            pieces: 0,
        });
        Record::Upstream {
            target: target.name.clone(),
            model: target.upstream_model.clone(),
        }
    }

    /// Count `delta` of the request serving now.
    pub fn delta(&mut self, delta: &Delta) {
        let (Some(open), Some(request)) = (self.open.as_mut(), self.requests.last_mut()) else {
            return;
        };
        match delta {
            Delta::Text(_) | Delta::ToolCall { .. } => open.pieces += 1,
            // A later report of the same request replaces an earlier one.
            Delta::Usage {
                prompt_tokens,
                completion_tokens,
                cached_tokens,
            } => {
                open.reported = true;
                request.prompt_tokens = *prompt_tokens;
                request.completion_tokens = *completion_tokens;
                request.cached_tokens = *cached_tokens;
            }
            Delta::Finish { .. } => {}
        }
    }

    /// The request serving now ended with `status` (`ok`, `cut`, `cancelled`, …).
    pub fn end(&mut self, status: &str) {
        let (Some(open), Some(request)) = (self.open.take(), self.requests.last_mut()) else {
            return;
        };
        status.clone_into(&mut request.status);
        if !open.reported || status != "ok" {
            // No final report: a cut or cancelled request is paid for what it streamed.
            request.estimated = true;
            request.completion_tokens = request.completion_tokens.max(open.pieces);
            if request.prompt_tokens == 0 {
                request.prompt_tokens = self.prompt_estimate;
            }
        }
    }

    /// Every request with its cost, and the usage record the client sees. Metrics count
    /// the tokens and cost per target.
    pub fn usage(mut self, model: &str) -> Record {
        self.end("ok");
        for (request, price) in self.requests.iter_mut().zip(&self.prices) {
            request.cost_usd = price.map(|price| {
                price.cost(
                    request.prompt_tokens,
                    request.cached_tokens,
                    request.completion_tokens,
                )
            });
            let labels = [
                ("model", model.to_owned()),
                ("target", request.target.clone()),
            ];
            for (kind, tokens) in [
                ("prompt", request.prompt_tokens),
                ("completion", request.completion_tokens),
            ] {
                if tokens > 0 {
                    let mut labels = labels.to_vec();
                    labels.push(("kind", kind.to_owned()));
                    metrics::counter!("unbroken_tokens_total", &labels).increment(tokens);
                }
            }
            if let Some(cost) = request.cost_usd.filter(|cost| *cost > 0.0) {
                metrics::gauge!("unbroken_cost_usd_total", &labels).increment(cost);
            }
        }
        let served = |r: &&UpstreamRequest| r.prompt_tokens > 0 || r.completion_tokens > 0;
        let prompt_tokens = self
            .requests
            .iter()
            .find(served)
            .map_or(0, |r| r.prompt_tokens);
        let completion_tokens = self
            .requests
            .iter()
            .map(|r| r.completion_tokens)
            .fold(0, u64::saturating_add);
        Record::Usage {
            prompt_tokens,
            completion_tokens,
            requests: self.requests,
        }
    }

    /// Whether any request was made.
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(name: &str, price: Option<Price>) -> Target {
        let provider = std::sync::Arc::new(providers::simulator::SimulatorProvider::new(
            providers::simulator::SimulatorConfig::default(),
        ));
        let limits = crate::router::Limits::from_config(
            &serde_json::from_value(serde_json::json!({ "provider": "simulator" })).unwrap(),
        );
        Target::new(provider, name.into(), limits)
            .named(name.into())
            .priced(price)
    }

    fn request(text: &str) -> ChatRequest {
        serde_json::from_value(serde_json::json!({
            "model": "m", "messages": [{ "role": "user", "content": text }]
        }))
        .unwrap()
    }

    #[test]
    fn a_continuation_counts_what_the_client_received_and_what_each_request_cost() {
        let price = Price {
            input_per_mtok: 2.0,
            output_per_mtok: 8.0,
            cached_input_per_mtok: None,
        };
        let first = target("claude", Some(price));
        let second = target("deepseek", Some(price));
        let mut calls = Calls::new(&request(&"x".repeat(400)));
        assert!(
            matches!(calls.begin(&first), Record::Upstream { ref target, .. } if target == "claude")
        );
        for _ in 0..3 {
            calls.delta(&Delta::Text("a".into()));
        }
        calls.end("cut");
        calls.begin(&second);
        calls.delta(&Delta::Text("b".into()));
        calls.delta(&Delta::Usage {
            prompt_tokens: 120,
            completion_tokens: 5,
            cached_tokens: 0,
        });
        let Record::Usage {
            prompt_tokens,
            completion_tokens,
            requests,
        } = calls.usage("m")
        else {
            panic!("not a usage record");
        };
        // The cut request reported nothing: its prompt (400 characters) and its three
        // pieces are estimated, and it is paid for.
        assert_eq!(requests[0].status, "cut");
        assert!(requests[0].estimated);
        assert_eq!(
            (requests[0].prompt_tokens, requests[0].completion_tokens),
            (100, 3)
        );
        assert_eq!(requests[1].status, "ok");
        assert!(!requests[1].estimated);
        assert_eq!((prompt_tokens, completion_tokens), (100, 8));
        let cost = |r: &UpstreamRequest| r.cost_usd.unwrap();
        assert!((cost(&requests[0]) - (100.0 * 2.0 + 3.0 * 8.0) / 1e6).abs() < 1e-12);
        assert!((cost(&requests[1]) - (120.0 * 2.0 + 5.0 * 8.0) / 1e6).abs() < 1e-12);
    }

    #[test]
    fn failed_attempts_are_listed_and_cost_nothing() {
        let model = Model::new("m".into(), vec![target("a", None), target("b", None)]);
        let mut calls = Calls::new(&request("hi"));
        calls.failed(
            &model,
            vec![Attempt {
                target: 0,
                status: "429".into(),
            }],
        );
        calls.begin(&model.targets[1]);
        calls.delta(&Delta::Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
            cached_tokens: 1,
        });
        let Record::Usage { requests, .. } = calls.usage("m") else {
            panic!("not a usage record");
        };
        assert_eq!(requests.len(), 2);
        assert_eq!(
            (requests[0].target.as_str(), requests[0].status.as_str()),
            ("a", "429")
        );
        assert_eq!(requests[0].completion_tokens, 0);
        assert_eq!(requests[1].cached_tokens, 1);
        assert_eq!(requests[1].cost_usd, None);
    }

    #[test]
    fn cached_prompt_tokens_have_their_own_price() {
        let price = Price {
            input_per_mtok: 3.0,
            output_per_mtok: 15.0,
            cached_input_per_mtok: Some(0.3),
        };
        let cost = price.cost(1_000_000, 500_000, 1_000_000);
        assert!((cost - (1.5 + 0.15 + 15.0)).abs() < 1e-9);
    }
}
