//! Requests and their answers: every request type names the subject it travels on and the type
//! it is answered with, in one declaration, so a caller and a server cannot pair them wrongly.
//!
//! - [`ApiRequest`]: the gateway asks whichever scheduler replica is free, on
//!   `sandbox.api.<resource>.<action>` (a queue group). Declared with [`api_request!`].
//! - [`NodeCommand`]: a scheduler (or the gateway, for files) asks one node, on
//!   `runtime.cmd.<node_id>.<verb>` ([`crate::subjects::node_command`]). Declared with
//!   [`node_command!`].
//!
//! Either is answered with a [`crate::Reply`] of its `Response`.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A payload that is answered with a [`crate::Reply`] of `Response`.
pub trait Request: Serialize + DeserializeOwned {
    type Response: Serialize + DeserializeOwned;
}

/// A request the gateway sends to the scheduler replicas (queue group) on [`ApiRequest::SUBJECT`].
pub trait ApiRequest: Request {
    /// `sandbox.api.<resource>.<action>`.
    const SUBJECT: &'static str;
}

/// A command to one node on `runtime.cmd.<node_id>.<VERB>`.
pub trait NodeCommand: Request {
    /// The last tokens of the subject, such as `containers.create`.
    const VERB: &'static str;
}

/// `api_request!(Request => "resource.action", Response)`: `Request` travels on
/// `sandbox.api.resource.action` and is answered with `Response`.
#[macro_export]
macro_rules! api_request {
    ($request:ty => $action:literal, $response:ty) => {
        impl $crate::request::Request for $request {
            type Response = $response;
        }
        impl $crate::request::ApiRequest for $request {
            const SUBJECT: &'static str = concat!("sandbox.api.", $action);
        }
    };
}

/// `node_command!(Command => "verb", Response)`: `Command` travels on
/// `runtime.cmd.<node_id>.verb` and is answered with `Response`.
#[macro_export]
macro_rules! node_command {
    ($command:ty => $verb:literal, $response:ty) => {
        impl $crate::request::Request for $command {
            type Response = $response;
        }
        impl $crate::request::NodeCommand for $command {
            const VERB: &'static str = $verb;
        }
    };
}
