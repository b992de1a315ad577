//! Target: stamping (`temporal::stamp`) never changes what a request was authorized for.
//!
//! flowgate decides on what inspection reads, then writes the verified principal into the
//! request (`identity`, the initiator header) and forwards the result. For every catalog method
//! with a place to stamp, messages are built from the method's field paths and damaged (see
//! [`proto`]). Stamping reads embedded messages inspection does not (the member a batch
//! operation sets, the signals of a reset): when one of those is not a valid message, stamping
//! refuses the call, as the server would refuse the request. Otherwise, inspecting the stamped
//! message must read exactly the same call and imply exactly the same questions: a stamp that
//! switched a oneof, added an element to a repeated field or overrode an inspected field would
//! fail here. And nothing panics.

use flowgate::temporal::catalog::CATALOG;
use flowgate::temporal::implied::{self, TaskWorkflow};
use flowgate::temporal::inspect;
use flowgate::temporal::stamp::{self, Stamps};

use crate::proto;

#[test]
fn stamping_keeps_what_was_inspected() {
    let cases = crate::cases(48);
    let header = stamp::header("flowgate-principal", br#"{"principal":"test:alice"}"#);
    let stamps = Stamps { identity: Some("test:alice via flowgate"), header: Some(("flowgate-principal", &header)) };
    for (index, spec) in CATALOG.iter().enumerate() {
        if spec.identity.is_none() && spec.header.is_none() {
            continue;
        }
        let strategy = (proto::message(&proto::SCHEMAS[index]), proto::damage());
        crate::run(&format!("stamp/{}", spec.name), cases, strategy, |(items, damage)| {
            let mut message = proto::encode(&items);
            damage.apply(&mut message);
            let Ok(call) = inspect::inspect(spec, &message) else { return Ok(()) };
            // A request whose implied questions cannot be read is refused before it is stamped.
            let Ok(questions) = implied::questions(spec, &message, &call, &TaskWorkflow::default()) else {
                return Ok(());
            };
            let stamped = match stamp::stamp(spec, &message, stamps) {
                Ok(Some(stamped)) => stamped,
                Ok(None) => return Ok(()),
                // A malformed message where stamping reads: refused (fail closed).
                Err(_) => return Ok(()),
            };
            let again = inspect::inspect(spec, &stamped).map_err(|e| format!("the stamped message is refused: {e}"))?;
            if again != call {
                return Err(format!("stamping changed the call:\n  before {call:?}\n  after  {again:?}"));
            }
            let implied_again = implied::questions(spec, &stamped, &again, &TaskWorkflow::default())
                .map_err(|e| format!("the stamped message's implied questions cannot be read: {e}"))?;
            if format!("{questions:?}") != format!("{implied_again:?}") {
                return Err(format!(
                    "stamping changed the implied questions:\n  before {questions:?}\n  after  {implied_again:?}"
                ));
            }
            if let Some(flowgate::temporal::Stamp::At(_)) = spec.identity
                && stamp::client_identity(spec, &stamped).map_err(|e| e.to_string())? != "test:alice via flowgate"
            {
                return Err("the stamped identity is not the one the server reads".into());
            }
            Ok(())
        });
    }
}
