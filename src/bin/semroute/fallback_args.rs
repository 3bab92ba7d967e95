//! The fallback and caution flags shared by the `fresh` and `loo` examples.

use clap::Args;
use semroute::RouterBuilder;

/// How unsure a router may be before it escalates or falls back.
#[derive(Args, Debug, Clone)]
pub struct FallbackArgs {
    /// Standard errors a predicted quality must clear the bar by (`RouterBuilder::caution`;
    /// default: derived from the hand labels, as the router does).
    #[arg(long)]
    pub caution: Option<f64>,
    /// Share of the exemplars themselves the derived fallback rule would call unfamiliar.
    #[arg(long, default_value_t = semroute::router::DEFAULT_UNFAMILIAR_SHARE)]
    pub unfamiliar_share: f64,
    /// A fixed fallback threshold (nearest similarity) instead of the derived rule.
    #[arg(long)]
    pub min_similarity: Option<f32>,
}

impl FallbackArgs {
    /// `b` with these settings.
    pub fn apply(&self, b: RouterBuilder) -> RouterBuilder {
        let b = b.unfamiliar_share(self.unfamiliar_share);
        let b = match self.caution {
            Some(z) => b.caution(z),
            None => b,
        };
        match self.min_similarity {
            Some(s) => b.min_similarity(s),
            None => b,
        }
    }
}
