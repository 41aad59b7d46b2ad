//! One module per plugin type, and the factory that builds them.

mod cors;
mod ip_restriction;
mod request_size_limit;

use std::sync::Arc;

use fleetgate_shared::model::PolicyConfig;

use crate::plugin::Plugin;
use crate::set::Consumers;
use crate::state::PolicyState;

pub use ip_restriction::client_ip;

/// Builds the plugin for policy `name`. `consumers` is the config version's consumer index;
/// `state` holds what must survive config versions.
pub fn build(
    name: &str,
    config: &PolicyConfig,
    consumers: &Arc<Consumers>,
    state: &PolicyState,
) -> Result<Arc<dyn Plugin>, String> {
    let _ = (consumers, state);
    Ok(match config {
        PolicyConfig::IpRestriction(c) => Arc::new(ip_restriction::IpRestriction::build(name, c)?),
        PolicyConfig::Cors(c) => Arc::new(cors::Cors::build(name, c)),
        PolicyConfig::RequestSizeLimit(c) => {
            Arc::new(request_size_limit::RequestSizeLimit::build(name, c))
        }
        other => {
            return Err(format!(
                "policy type `{}` is not supported by this agent build yet; remove the policy or upgrade the agent",
                other.type_name()
            ));
        }
    })
}
