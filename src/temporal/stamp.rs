//! Stamping: writing flowgate's own values into a request before it goes upstream.
//!
//! Two things are written, where the catalog says ([`Stamp`]):
//!
//! * the verified principal over the client's `identity`, which Temporal copies into the events
//!   it records (`WorkflowExecutionStarted.identity`, `WorkflowExecutionSignaled.identity`, a
//!   poller's identity, ...). A client may put anything there; after stamping, the history names
//!   who really acted;
//! * an entry of a Temporal `Header` (the verified initiator, for workflow code to read), over
//!   any entry of the same name the client sent.
//!
//! **Appending, not re-encoding.** A protobuf parser takes the last occurrence of a singular
//! field and merges the occurrences of an embedded message; a map entry whose key repeats
//! replaces the earlier one. So the field, wrapped in the messages of its path, appended at the
//! end of the request overrides the client's value, and every other byte of the request goes
//! upstream exactly as the client sent it and as flowgate inspected it. The cost is one copy of
//! the message plus a few dozen bytes; nothing is parsed beyond the oneofs on the way.
//!
//! Two shapes cannot simply take an appended field. A oneof: appending a member the request does
//! not set would switch it (a batch termination would become a batch signal), so the field goes
//! only into the member the request sets, as the server reads it (the last one on the wire). A
//! repeated field: an appended element is a new element, so each element is rewritten instead
//! (`ExecuteMultiOperation`'s operations).

use crate::temporal::catalog::{MethodSpec, Path, Stamp};
use crate::temporal::wire::{self, Value, WireError};

/// `temporal.api.common.v1.Header.fields = 1` (`map<string, Payload>`), a map entry's
/// `key = 1` and `value = 2`, and `Payload.metadata = 1` (`map<string, bytes>`), `data = 2`.
const HEADER_FIELDS: u32 = 1;
const MAP_KEY: u32 = 1;
const MAP_VALUE: u32 = 2;
const PAYLOAD_METADATA: u32 = 1;
const PAYLOAD_DATA: u32 = 2;

/// What to write into a request: each is skipped when `None`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stamps<'a> {
    /// The string for every `identity` field.
    pub identity: Option<&'a str>,
    /// flowgate's header entry: its name, and the encoded `Header` holding it (see [`header`]).
    pub header: Option<(&'a str, &'a [u8])>,
}

/// Rewrites one embedded message: `None` leaves it as it is.
type Rewrite<'r> = &'r mut dyn FnMut(&[u8]) -> Result<Option<Vec<u8>>, WireError>;

/// What one stamp does to a message.
enum Edit {
    Unchanged,
    /// Append the value at this path.
    Append(Vec<u32>),
    /// The message rewritten, value included.
    Rewritten(Vec<u8>),
}

/// `message`, a request of `spec`'s RPC, with `stamps` written in. `None` when nothing applies
/// (the request then goes on as it came).
pub fn stamp(spec: &MethodSpec, message: &[u8], stamps: Stamps<'_>) -> Result<Option<Vec<u8>>, WireError> {
    let header_name = stamps.header.map_or("", |(name, _)| name);
    let wanted = [(spec.identity, stamps.identity.map(str::as_bytes)), (spec.header, stamps.header.map(|(_, h)| h))];
    let mut rewritten: Option<Vec<u8>> = None;
    let mut appends: Vec<(Vec<u32>, &[u8])> = Vec::new();
    for (place, value) in wanted {
        let (Some(place), Some(value)) = (place, value) else { continue };
        let current = rewritten.as_deref().unwrap_or(message);
        match edit(current, &place, value, header_name)? {
            Edit::Unchanged => {}
            Edit::Append(path) => appends.push((path, value)),
            Edit::Rewritten(message) => rewritten = Some(message),
        }
    }
    if rewritten.is_none() && appends.is_empty() {
        return Ok(None);
    }
    let mut out = match rewritten {
        Some(out) => out,
        None => {
            let extra: usize = appends.iter().map(|(path, value)| nested_len(path, value.len())).sum();
            let mut out = Vec::with_capacity(message.len() + extra);
            out.extend_from_slice(message);
            out
        }
    };
    for (path, value) in appends {
        put_nested(&mut out, &path, value);
    }
    Ok(Some(out))
}

/// What writing `value` where `place` says takes, in `message`.
fn edit(message: &[u8], place: &Stamp, value: &[u8], header_name: &str) -> Result<Edit, WireError> {
    match *place {
        Stamp::At(path) => Ok(Edit::Append(path.to_vec())),
        Stamp::ReplaceAt(path) => {
            Ok(if has_entry(message, path, header_name)? { Edit::Append(path.to_vec()) } else { Edit::Unchanged })
        }
        Stamp::InOneof { oneof, members } => {
            let Some((member, inner)) = set_member(message, oneof, members)? else {
                return Ok(Edit::Unchanged);
            };
            // Into the member the request sets, inside it: appending another occurrence of the
            // member would merge too, but a request keeps the shape it was inspected in (one
            // occurrence per member: inspection refuses an `ExecuteMultiOperation` with more).
            edit_within(message, &[oneof, &[member]].concat(), &inner, value, header_name)
        }
        Stamp::InAny { any, type_name, inner } => {
            // The type of the merged `Any` (its last `type_url = 1`), as Temporal unpacks it.
            let url = wire::last_string(message, &[any, &[1]].concat())?;
            if url.and_then(|url| url.rsplit('/').next()) != Some(type_name) {
                return Ok(Edit::Unchanged);
            }
            // `value = 2` is bytes, not a message: the server takes its last occurrence whole,
            // so each is rewritten rather than merged into.
            edit_within(message, &[any, &[2]].concat(), inner, value, header_name)
        }
        Stamp::All(places) => {
            let mut current = std::borrow::Cow::Borrowed(message);
            let mut changed = false;
            for place in places {
                match edit(&current, place, value, header_name)? {
                    Edit::Unchanged => continue,
                    Edit::Append(path) => put_nested(current.to_mut(), &path, value),
                    Edit::Rewritten(out) => current = std::borrow::Cow::Owned(out),
                }
                changed = true;
            }
            Ok(if changed { Edit::Rewritten(current.into_owned()) } else { Edit::Unchanged })
        }
        Stamp::InEach { repeated, each } => edit_within(message, &[repeated], each, value, header_name),
    }
}

/// `inner` done inside every occurrence of the embedded message at `path` (each on its own: a
/// header whose forged entry is in an earlier occurrence gets flowgate's entry after it there,
/// and merged, flowgate's is the last).
fn edit_within(
    message: &[u8],
    path: &[u32],
    inner: &Stamp,
    value: &[u8],
    header_name: &str,
) -> Result<Edit, WireError> {
    let rewritten = rewrite_at(message, path, &mut |within| {
        Ok(match edit(within, inner, value, header_name)? {
            Edit::Unchanged => None,
            Edit::Append(path) => {
                let mut out = Vec::with_capacity(within.len() + nested_len(&path, value.len()));
                out.extend_from_slice(within);
                put_nested(&mut out, &path, value);
                Some(out)
            }
            Edit::Rewritten(out) => Some(out),
        })
    })?;
    Ok(rewritten.map_or(Edit::Unchanged, Edit::Rewritten))
}

/// `message` with every occurrence of the embedded message at `path` replaced by what `rewrite`
/// makes of it (`None`: left as it is); every other field copied as it was, in order. `None`
/// when nothing changed.
fn rewrite_at(message: &[u8], path: &[u32], rewrite: Rewrite<'_>) -> Result<Option<Vec<u8>>, WireError> {
    let Some((&first, rest)) = path.split_first() else {
        return rewrite(message);
    };
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    for field in wire::raw_fields(message) {
        let field = field?;
        let Value::Bytes(inner) = field.value else { continue };
        if field.number != first {
            continue;
        }
        if let Some(replaced) = rewrite_at(inner, rest, rewrite)? {
            let out = out.get_or_insert_with(|| Vec::with_capacity(message.len() + 256));
            out.extend_from_slice(&message[copied..field.span.start]);
            wire::put_bytes_field(out, first, &replaced);
            copied = field.span.end;
        }
    }
    Ok(out.map(|mut out| {
        out.extend_from_slice(&message[copied..]);
        out
    }))
}

/// Whether the `Header` at `path` (all its occurrences) has an entry called `name`.
fn has_entry(message: &[u8], path: &[u32], name: &str) -> Result<bool, WireError> {
    let mut found = false;
    wire::visit_all(message, &[path, &[HEADER_FIELDS]].concat(), &mut |entry| {
        found |= wire::last_bytes(entry, &[MAP_KEY])? == Some(name.as_bytes());
        Ok(())
    })?;
    Ok(found)
}

/// The `identity` the client sent, where it is a plain field of the request (not inside a oneof
/// or a repeated field). Empty when absent.
pub fn client_identity<'a>(spec: &MethodSpec, message: &'a [u8]) -> Result<&'a str, WireError> {
    let path = match spec.identity {
        Some(Stamp::At(path)) => path,
        Some(Stamp::All(places)) => match places.first() {
            Some(Stamp::At(path)) => path,
            _ => return Ok(""),
        },
        _ => return Ok(""),
    };
    Ok(wire::last_string(message, path)?.unwrap_or(""))
}

/// An encoded `temporal.api.common.v1.Header` holding one entry, `name`, a payload of JSON
/// (`encoding: json/plain`, which every SDK's default converter reads).
pub fn header(name: &str, json: &[u8]) -> Vec<u8> {
    let mut encoding = Vec::with_capacity(24);
    wire::put_bytes_field(&mut encoding, MAP_KEY, b"encoding");
    wire::put_bytes_field(&mut encoding, MAP_VALUE, b"json/plain");
    let mut payload = Vec::with_capacity(encoding.len() + json.len() + 8);
    wire::put_bytes_field(&mut payload, PAYLOAD_METADATA, &encoding);
    wire::put_bytes_field(&mut payload, PAYLOAD_DATA, json);
    let mut entry = Vec::with_capacity(payload.len() + name.len() + 8);
    wire::put_bytes_field(&mut entry, MAP_KEY, name.as_bytes());
    wire::put_bytes_field(&mut entry, MAP_VALUE, &payload);
    let mut header = Vec::with_capacity(entry.len() + 4);
    wire::put_bytes_field(&mut header, HEADER_FIELDS, &entry);
    header
}

/// The member of the oneof in the message at `oneof` that the server takes (the last on the
/// wire, across every occurrence of that message), with what to stamp inside it, if anything.
fn set_member(
    message: &[u8],
    oneof: Path,
    members: &'static [(u32, Option<Stamp>)],
) -> Result<Option<(u32, Stamp)>, WireError> {
    let mut last: Option<&'static (u32, Option<Stamp>)> = None;
    wire::visit_all(message, oneof, &mut |holder| {
        for field in wire::fields(holder) {
            // A member on the wire with another wire type than a message's is an unknown
            // field to the server, not the member.
            if let (number, Value::Bytes(_)) = field?
                && let Some(member) = members.iter().find(|(n, _)| *n == number)
            {
                last = Some(member);
            }
        }
        Ok(())
    })?;
    Ok(last.and_then(|&(number, inner)| inner.map(|inner| (number, inner))))
}

/// How many bytes [`put_nested`] appends.
fn nested_len(path: &[u32], len: usize) -> usize {
    path.iter().rev().fold(len, |inner, &number| wire::bytes_field_len(number, inner))
}

/// Appends `value` as the length-delimited field at `path`, each step an embedded message.
fn put_nested(out: &mut Vec<u8>, path: &[u32], value: &[u8]) {
    for (depth, &number) in path.iter().enumerate() {
        wire::put_varint(out, u64::from(number) << 3 | 2);
        wire::put_varint(out, nested_len(&path[depth + 1..], value.len()) as u64);
    }
    out.extend_from_slice(value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::temporal::catalog::lookup;

    fn rpc(name: &str) -> &'static MethodSpec {
        let path = format!("/temporal.api.workflowservice.v1.WorkflowService/{name}");
        lookup(&path)
    }

    fn field(number: u32, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        wire::put_bytes_field(&mut out, number, value);
        out
    }

    /// `message` stamped with `okta:alice` as identity and a header whose payload is `json`.
    fn stamped_as_alice(spec: &MethodSpec, message: &[u8], json: &[u8]) -> Vec<u8> {
        let header = header("flowgate-principal", json);
        let stamps = Stamps { identity: Some("okta:alice"), header: Some(("flowgate-principal", &header)) };
        stamp(spec, message, stamps).unwrap().expect("a method with places to stamp")
    }

    /// The bytes of every occurrence of the top-level field `number`, in order.
    fn occurrences(message: &[u8], number: u32) -> Vec<Vec<u8>> {
        wire::raw_fields(message)
            .map(Result::unwrap)
            .filter(|f| f.number == number)
            .map(|f| match f.value {
                Value::Bytes(bytes) => bytes.to_vec(),
                _ => unreachable!("a length-delimited field"),
            })
            .collect()
    }

    #[test]
    fn a_top_level_identity_is_appended_and_read_last() {
        let spec = rpc("StartWorkflowExecution");
        let message = [field(1, b"payments"), field(2, b"deploy-1"), field(9, b"mallory")].concat();
        let stamped = stamp(spec, &message, Stamps { identity: Some("okta:alice"), header: None }).unwrap().unwrap();
        assert!(stamped.starts_with(&message), "the client's bytes go on untouched");
        assert_eq!(wire::last_string(&stamped, &[9]).unwrap(), Some("okta:alice"));
        assert_eq!(wire::last_string(&stamped, &[2]).unwrap(), Some("deploy-1"));
        assert_eq!(client_identity(spec, &message).unwrap(), "mallory");
    }

    #[test]
    fn nested_paths_merge_into_the_message_the_server_reads() {
        let spec = rpc("UpdateWorkflowExecution");
        let meta = [field(1, b"update-1"), field(2, b"mallory")].concat();
        let input = field(2, b"my-update");
        let request = [field(1, &meta), field(2, &input)].concat();
        let message = [field(1, b"payments"), field(5, &request)].concat();
        let stamped = stamped_as_alice(spec, &message, br#"{"principal":"okta:alice"}"#);
        assert_eq!(wire::last_string(&stamped, &[5, 1, 2]).unwrap(), Some("okta:alice"));
        // The update's id and name survive the merge.
        assert_eq!(wire::last_string(&stamped, &[5, 1, 1]).unwrap(), Some("update-1"));
        assert_eq!(wire::last_string(&stamped, &[5, 2, 2]).unwrap(), Some("my-update"));
        let entry = wire::last_bytes(&stamped, &[5, 2, 1, 1]).unwrap().unwrap();
        assert_eq!(wire::last_string(entry, &[1]).unwrap(), Some("flowgate-principal"));
        assert_eq!(wire::last_string(entry, &[2, 2]).unwrap(), Some(r#"{"principal":"okta:alice"}"#));
    }

    #[test]
    fn a_oneof_is_stamped_in_the_member_set_last_and_never_switched() {
        let spec = rpc("StartBatchOperation");
        // A signal batch first, then a termination: the server runs the termination.
        let signal = [field(1, b"sig"), field(4, b"mallory")].concat();
        let termination = field(2, b"mallory");
        let message = [field(1, b"payments"), field(11, &signal), field(10, &termination)].concat();
        let stamped = stamped_as_alice(spec, &message, b"{}");
        assert_eq!(wire::last_string(&stamped, &[10, 2]).unwrap(), Some("okta:alice"));
        // No header: a termination has none, and a signal member appended would switch the oneof.
        let last = wire::raw_fields(&stamped).last().unwrap().unwrap();
        assert_eq!(last.number, 10, "the termination stays the member set last");
        // A batch that sets no operation gets nothing.
        assert_eq!(
            stamp(spec, &field(1, b"payments"), Stamps { identity: Some("okta:alice"), header: None }).unwrap(),
            None
        );
        // A member with a scalar wire type is an unknown field, not the member.
        let mut scalar = field(1, b"payments");
        wire::put_varint_field(&mut scalar, 10, 1);
        assert_eq!(stamp(spec, &scalar, Stamps { identity: Some("okta:alice"), header: None }).unwrap(), None);
    }

    #[test]
    fn each_operation_of_a_multi_operation_is_stamped_in_place() {
        let spec = rpc("ExecuteMultiOperation");
        let start = [field(2, b"wf"), field(9, b"mallory")].concat();
        let update = field(5, &field(1, &[field(1, b"u1"), field(2, b"mallory")].concat()));
        let message =
            [field(1, b"payments"), field(2, &field(1, &start)), field(2, &field(2, &update)), field(3, b"tail")]
                .concat();
        let stamped = stamped_as_alice(spec, &message, b"{}");
        let operations = occurrences(&stamped, 2);
        assert_eq!(operations.len(), 2, "still exactly two operations");
        assert_eq!(wire::last_string(&operations[0], &[1, 9]).unwrap(), Some("okta:alice"));
        assert_eq!(wire::last_string(&operations[0], &[1, 2]).unwrap(), Some("wf"));
        assert!(wire::last_bytes(&operations[0], &[1, 16, 1]).unwrap().is_some());
        assert_eq!(wire::last_string(&operations[1], &[2, 5, 1, 2]).unwrap(), Some("okta:alice"));
        assert_eq!(wire::last_string(&operations[1], &[2, 5, 1, 1]).unwrap(), Some("u1"));
        assert!(wire::last_bytes(&operations[1], &[2, 5, 2, 1, 1]).unwrap().is_some());
        assert_eq!(wire::last_string(&stamped, &[3]).unwrap(), Some("tail"), "other fields kept, in order");
    }

    fn entries(message: &[u8], path: &[u32]) -> Vec<(String, String)> {
        let mut out = Vec::new();
        wire::visit_all(message, &[path, &[1]].concat(), &mut |entry| {
            let key = wire::last_string(entry, &[1])?.unwrap_or_default().to_owned();
            let data = wire::last_string(entry, &[2, 2])?.unwrap_or_default().to_owned();
            out.push((key, data));
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn commands_name_their_worker_on_starts_and_signals_and_lose_forged_entries_elsewhere() {
        let spec = rpc("RespondWorkflowTaskCompleted");
        let forged = header("flowgate-principal", b"forged");
        let other = header("tracing", b"{}");
        let child = field(12, &[field(2, b"child-wf"), field(14, &other)].concat());
        let activity_forged = field(2, &[field(1, b"act-1"), field(5, &forged)].concat());
        let activity_plain = field(2, &[field(1, b"act-2"), field(5, &other)].concat());
        // The forged entry in an earlier occurrence of the member: merged, the server keeps it.
        let activity_split = [field(2, &field(5, &forged)), field(2, &field(1, b"act-3"))].concat();
        let timer = field(3, &field(1, b"timer-1"));
        let message = [
            field(1, b"token"),
            field(2, &child),
            field(2, &activity_forged),
            field(2, &activity_plain),
            field(2, &activity_split),
            field(2, &timer),
            field(9, b"payments"),
        ]
        .concat();
        let ours = header("flowgate-principal", b"worker");
        let stamped =
            stamp(spec, &message, Stamps { identity: Some("w"), header: Some(("flowgate-principal", &ours)) })
                .unwrap()
                .unwrap();
        let commands = occurrences(&stamped, 2);
        assert_eq!(commands.len(), 5, "no command added or lost");
        let last =
            |entries: Vec<(String, String)>, key: &str| entries.into_iter().rfind(|(k, _)| k == key).map(|(_, v)| v);
        assert_eq!(last(entries(&commands[0], &[12, 14]), "flowgate-principal").as_deref(), Some("worker"));
        assert_eq!(last(entries(&commands[0], &[12, 14]), "tracing").as_deref(), Some("{}"), "other entries kept");
        assert_eq!(last(entries(&commands[1], &[2, 5]), "flowgate-principal").as_deref(), Some("worker"));
        assert_eq!(commands[2], activity_plain, "an activity without our entry is left alone");
        assert_eq!(last(entries(&commands[3], &[2, 5]), "flowgate-principal").as_deref(), Some("worker"));
        assert_eq!(commands[4], timer);
        assert_eq!(wire::last_string(&stamped, &[3]).unwrap(), Some("w"));
        assert_eq!(wire::last_string(&stamped, &[9]).unwrap(), Some("payments"));
    }

    #[test]
    fn an_update_a_worker_completes_names_the_worker() {
        let spec = rpc("RespondWorkflowTaskCompleted");
        let response =
            [field(1, &[field(1, b"update-1"), field(2, b"okta:ceo via flowgate")].concat()), field(2, b"ok")].concat();
        let any = |type_url: &[u8], value: &[u8]| [field(1, type_url), field(2, value)].concat();
        let updated = field(5, &any(b"type.googleapis.com/temporal.api.update.v1.Response", &response));
        let accepted = field(5, &any(b"type.googleapis.com/temporal.api.update.v1.Acceptance", b"\x0a\x01x"));
        let message = [
            field(1, b"token"),
            field(3, b"12@host"),
            field(11, &accepted),
            field(11, &updated),
            field(9, b"payments"),
        ]
        .concat();
        let stamped = stamp(spec, &message, Stamps { identity: Some("w"), header: None }).unwrap().unwrap();
        assert_eq!(wire::last_string(&stamped, &[3]).unwrap(), Some("w"));
        let messages = occurrences(&stamped, 11);
        assert_eq!(messages[0], accepted, "an acceptance is left as it is");
        let packed = wire::last_bytes(&messages[1], &[5, 2]).unwrap().unwrap();
        assert_eq!(wire::last_string(packed, &[1, 2]).unwrap(), Some("w"), "the worker's forged identity is replaced");
        assert_eq!(wire::last_string(packed, &[1, 1]).unwrap(), Some("update-1"));
        assert_eq!(wire::last_string(packed, &[2]).unwrap(), Some("ok"));
        assert_eq!(client_identity(spec, &message).unwrap(), "12@host");
    }

    #[test]
    fn signals_after_a_reset_carry_the_header_even_inside_a_batch() {
        let ours = header("flowgate-principal", b"alice");
        let stamps = Stamps { identity: Some("alice"), header: Some(("flowgate-principal", &ours)) };
        let signal = field(1, &[field(1, b"sig"), field(3, &header("flowgate-principal", b"forged"))].concat());
        let options = field(2, &field(1, b"opts"));
        let reset = [field(1, b"payments"), field(8, &signal), field(8, &options), field(9, b"mallory")].concat();
        let stamped = stamp(rpc("ResetWorkflowExecution"), &reset, stamps).unwrap().unwrap();
        let posts = occurrences(&stamped, 8);
        assert_eq!(posts.len(), 2);
        assert_eq!(entries(&posts[0], &[1, 3]).last().unwrap().1, "alice");
        assert_eq!(posts[1], options);
        assert_eq!(wire::last_string(&stamped, &[9]).unwrap(), Some("alice"));

        let batch = [field(1, b"payments"), field(14, &[field(3, b"mallory"), field(5, &signal)].concat())].concat();
        let stamped = stamp(rpc("StartBatchOperation"), &batch, stamps).unwrap().unwrap();
        assert_eq!(wire::last_string(&stamped, &[14, 3]).unwrap(), Some("alice"));
        let mut headers = Vec::new();
        wire::visit_all(&stamped, &[14, 5], &mut |post| {
            headers.push(entries(post, &[1, 3]).last().unwrap().1.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(headers, ["alice"], "one post-reset signal, stamped in place");
    }

    #[test]
    fn methods_without_a_place_are_left_alone() {
        let spec = rpc("DescribeNamespace");
        let stamps = Stamps { identity: Some("okta:alice"), header: Some(("flowgate-principal", b"x")) };
        assert_eq!(stamp(spec, &field(1, b"payments"), stamps).unwrap(), None);
    }

    #[test]
    fn nested_lengths_count_every_prefix() {
        let mut out = Vec::new();
        put_nested(&mut out, &[5, 1, 2], &[b'x'; 200]);
        assert_eq!(out.len(), nested_len(&[5, 1, 2], 200));
        assert_eq!(wire::last_bytes(&out, &[5, 1, 2]).unwrap().unwrap().len(), 200);
    }
}
