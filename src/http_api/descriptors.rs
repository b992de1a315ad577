//! Temporal's descriptors, compiled into the binary: `temporal_api.binpb`, a
//! `FileDescriptorSet` written by `scripts/temporal-descriptors.py` (WorkflowService,
//! OperatorService, everything they import with the `google.api.http` options intact, the error
//! details and `google.rpc.Status`). Regenerating it is a deliberate commit.

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

/// The committed descriptor set.
pub const TEMPORAL_API: &[u8] = include_bytes!("temporal_api.binpb");

static POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    // The bytes are part of the build and a test decodes them, so this cannot fail at run time.
    DescriptorPool::decode(TEMPORAL_API).expect("src/http_api/temporal_api.binpb is a valid FileDescriptorSet")
});

/// The pool, decoded once (a few milliseconds) on first use. Cloning it is cheap.
pub fn pool() -> &'static DescriptorPool {
    &POOL
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_set_holds_the_services_the_errors_and_the_http_options() {
        let pool = DescriptorPool::decode(TEMPORAL_API).unwrap();
        for service in crate::http_api::routes::SERVICES {
            assert!(pool.get_service_by_name(service).is_some(), "{service}");
        }
        assert!(pool.get_extension_by_name("google.api.http").is_some());
        for message in [
            "google.rpc.Status",
            "google.protobuf.Any",
            "temporal.api.errordetails.v1.NotFoundFailure",
            "temporal.api.errordetails.v1.WorkflowExecutionAlreadyStartedFailure",
            "temporal.api.failure.v1.Failure",
            "temporal.api.update.v1.Acceptance",
        ] {
            assert!(pool.get_message_by_name(message).is_some(), "{message}");
        }
        // The script fills in json_name (the Python descriptors leave it out).
        let start = pool.get_message_by_name("temporal.api.workflowservice.v1.StartWorkflowExecutionRequest").unwrap();
        let field = start.get_field_by_name("workflow_id").unwrap();
        assert_eq!(field.json_name(), "workflowId");
        assert_eq!(field.field_descriptor_proto().json_name(), "workflowId");
    }
}
