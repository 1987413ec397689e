//! The direct path for the commonest MCP message: a stateless (2026-07-28) `tools/call`.
//!
//! rmcp answers a stateless request by building a whole service for it: a serve loop task, a
//! handler task and channels between them, which costs more CPU than the tool call itself
//! (BENCHMARKS.md, issue 3). A request this module recognises completely is answered here, with
//! the same handler code and rmcp's own message types, so the bytes are rmcp's. Anything else,
//! or anything unusual (a session, an `Origin`, repeated or `Mcp-Param-*` headers, arguments
//! mirrored in headers, a progress token, unknown fields, an unknown tool, a chunked body),
//! goes to rmcp untouched: recognising too little only costs speed, never behaviour.
//! `tests/integration/mcp.rs` compares both paths on the wire.
//!
//! One difference is deliberate: a call in flight when its endpoint closes (a reload removed the
//! adapter, or the gateway is draining) finishes here, where rmcp would abort it with a 500;
//! in-flight requests are meant to survive reloads and drains.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full};
use rmcp::model::{
    CallToolResponse, ClientCapabilities, JsonObject, RequestId, ServerJsonRpcMessage, ServerResult,
};
use serde::Deserialize;
use serde::de::IgnoredAny;

use super::{Answer, Compact, Endpoint, Pinned, Progress, names};
use crate::response::{self, HttpResponse, full};
use crate::server::ReadError;

/// The only protocol version served here: the one whose requests carry everything in `_meta`.
const VERSION: &str = "2026-07-28";

impl Endpoint {
    /// Answers one request for this endpoint: directly when it is a plain stateless
    /// `tools/call`, through rmcp otherwise. rmcp's future is boxed: a future is as large as
    /// its largest branch, and is copied at that size each time it moves.
    pub(super) async fn serve<B>(
        &self,
        request: http::Request<B>,
        max_body_bytes: usize,
    ) -> HttpResponse
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display + 'static,
    {
        if request.method() != http::Method::POST
            || !plain_headers(request.headers(), max_body_bytes)
        {
            return Box::pin(self.service.handle(request)).await;
        }
        let (parts, body) = request.into_parts();
        let body = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) => {
                // What rmcp answers when a body cannot be read; but a caller too slow to send
                // it is told so (the listener's `ReadDeadline`).
                let mut response =
                    http::Response::new(full(format!("Failed to read request body: {error}")));
                *response.status_mut() = match (&error as &dyn std::any::Any).downcast_ref() {
                    Some(ReadError::TimedOut(_)) => StatusCode::REQUEST_TIMEOUT,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                return response;
            }
        };
        if let Some(call) = ToolCall::recognise(&parts.headers, &body) {
            // The adapter and plugins the front door pinned, for the whole call.
            let Some(pinned) = parts.extensions.get::<Pinned>().cloned() else {
                return Box::pin(
                    self.service
                        .handle(http::Request::from_parts(parts, Full::new(body))),
                )
                .await;
            };
            // rmcp checks arguments mirrored in `Mcp-Param-*` headers (`x-mcp-header`).
            if let Some(tool) = pinned.tool(&call.params.name)
                && tool.inputs.iter().all(|input| input.header.is_none())
            {
                // Counted by the front door already (a stateless call); this is a no-op then.
                if let Err(error) = pinned.admit(tool).await {
                    return super::limited(&error);
                }
                self.handler.invoker.metrics().tool_call("direct");
                let meta = crate::trace::MetaContext {
                    traceparent: call.params.meta.traceparent.as_deref(),
                    tracestate: call.params.meta.tracestate.as_deref(),
                };
                let answered = self
                    .handler
                    .run(
                        tool,
                        &pinned,
                        call.params.arguments,
                        &Progress::none(),
                        meta,
                        true,
                    )
                    .await;
                return match answered {
                    Answer::Object(compact) => answer_object(call.id, &compact),
                    Answer::Result(result) => answer(call.id, result.into()),
                };
            }
        }
        Box::pin(
            self.service
                .handle(http::Request::from_parts(parts, Full::new(body))),
        )
        .await
    }
}

/// Whether the headers are those of a plain stateless request rmcp would accept as they are:
/// a well-formed `Host`, JSON in, JSON or SSE accepted (no weights), the 2026-07-28 version,
/// `Mcp-Method: tools/call`, no session, no `Origin`, no `Mcp-Param-*`, and a declared length
/// within the limit.
fn plain_headers(headers: &HeaderMap, max_body_bytes: usize) -> bool {
    use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, HOST, ORIGIN};
    // One pass over the headers: a lookup of each name hashes it (the `Mcp-*` ones byte by
    // byte), and a message has fewer headers than there are names to check.
    let (mut host, mut length, mut content_type) = (None, None, None);
    let (mut json, mut sse) = (false, false);
    let (mut version, mut versions, mut method, mut methods) = (None, 0, None, 0);
    for (name, value) in headers {
        if name == HOST {
            host.get_or_insert(value);
        } else if name == CONTENT_LENGTH {
            length.get_or_insert(value);
        } else if name == CONTENT_TYPE {
            content_type.get_or_insert(value);
        } else if name == ACCEPT {
            if !accepts(value, &mut json, &mut sse) {
                return false;
            }
        } else if name == ORIGIN || name == names::MCP_SESSION_ID {
            return false;
        } else if name == names::MCP_PROTOCOL_VERSION {
            version = Some(value);
            versions += 1;
        } else if name == names::MCP_METHOD {
            method = Some(value);
            methods += 1;
        } else if name.as_str().starts_with("mcp-param-") {
            return false;
        }
    }
    // rmcp refuses a malformed `Host` even with its host allow-list off.
    let host_ok = host
        .and_then(|v| v.to_str().ok())
        .is_some_and(|host| http::uri::Authority::try_from(host).is_ok());
    let length_ok = length
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|length| length <= max_body_bytes);
    // rmcp refuses repeated `Mcp-*` headers.
    let once = |value: Option<&HeaderValue>, count: usize, wanted: &str| {
        count == 1 && value.is_some_and(|v| v.as_bytes() == wanted.as_bytes())
    };
    host_ok
        && length_ok
        && content_type.is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"application/json"))
        && json
        && sse
        && once(version, versions, VERSION)
        && once(method, methods, "tools/call")
}

/// Notes whether one `Accept` value lists `application/json` and `text/event-stream`; false
/// when it has parameters anywhere (a `q=0` would change rmcp's answer; parameters are rare
/// enough to leave to it). The direct path needs both, over all the values.
fn accepts(value: &HeaderValue, json: &mut bool, sse: &mut bool) -> bool {
    let Ok(value) = value.to_str() else {
        return false;
    };
    for entry in value.split(',') {
        let entry = entry.trim();
        if entry.contains(';') || entry.contains('"') {
            return false;
        }
        *json |= entry.eq_ignore_ascii_case("application/json");
        *sse |= entry.eq_ignore_ascii_case("text/event-stream");
    }
    true
}

/// The value of a header that appears exactly once (rmcp refuses repeated `Mcp-*` headers).
fn single<'a>(headers: &'a HeaderMap, name: &http::HeaderName) -> Option<&'a [u8]> {
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    values.next().is_none().then_some(value.as_bytes())
}

/// A `tools/call` request with nothing but a name, arguments and the required `_meta`. Its
/// required strings borrow from the body where they hold no escapes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolCall<'a> {
    #[serde(borrow)]
    jsonrpc: Cow<'a, str>,
    id: RequestId,
    #[serde(borrow)]
    method: Cow<'a, str>,
    #[serde(borrow)]
    params: Params<'a>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
    #[serde(default)]
    arguments: Option<JsonObject>,
    #[serde(rename = "_meta", borrow)]
    meta: Meta<'a>,
}

/// The request metadata of 2026-07-28, without a progress token (progress needs a stream).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta<'a> {
    #[serde(rename = "io.modelcontextprotocol/protocolVersion", borrow)]
    protocol_version: Cow<'a, str>,
    #[serde(rename = "io.modelcontextprotocol/clientCapabilities")]
    _client_capabilities: ClientCapabilities,
    #[serde(rename = "io.modelcontextprotocol/clientInfo", default)]
    _client_info: Option<IgnoredAny>,
    /// W3C trace context (SEP-414).
    #[serde(default)]
    traceparent: Option<String>,
    #[serde(default)]
    tracestate: Option<String>,
}

impl<'a> ToolCall<'a> {
    fn recognise(headers: &HeaderMap, body: &'a [u8]) -> Option<ToolCall<'a>> {
        let call: ToolCall = serde_json::from_slice(body).ok()?;
        let named = single(headers, &names::MCP_NAME);
        (call.jsonrpc == "2.0"
            && call.method == "tools/call"
            && call.params.meta.protocol_version == VERSION
            && named == Some(call.params.name.as_bytes()))
        .then_some(call)
    }
}

/// The JSON-RPC response, as rmcp writes it for a 2026-07-28 peer.
fn answer(id: RequestId, response: CallToolResponse) -> HttpResponse {
    let mut result = ServerResult::from(response);
    result.fill_missing_cache_hints();
    let message = ServerJsonRpcMessage::response(result, id);
    let body = serde_json::to_vec(&message).expect("a tool result serializes");
    response::json_bytes(StatusCode::OK, body)
}

/// Marks where a successful object result's id, text and structured content go in the
/// message rmcp would write: control characters, which JSON always escapes, so none can occur
/// in the rest of the message as serialized.
const ID_MARK: &str = "\u{1}capgate-id\u{1}";
const TEXT_MARK: &str = "\u{1}capgate-text\u{1}";
const OBJECT_MARK: &str = "\u{1}capgate-object\u{1}";

/// rmcp's message for a successful structured result, cut at the id, the text and the
/// structured content, which are what differs between two such messages: written once.
static OBJECT_FRAME: std::sync::LazyLock<Vec<(Slot, String)>> = std::sync::LazyLock::new(|| {
    let mut result =
        rmcp::model::CallToolResult::structured(serde_json::Value::String(OBJECT_MARK.to_owned()));
    result.content = vec![rmcp::model::ContentBlock::text(TEXT_MARK.to_owned())];
    let mut framed = ServerResult::from(CallToolResponse::from(result));
    framed.fill_missing_cache_hints();
    let message = ServerJsonRpcMessage::response(framed, RequestId::String(ID_MARK.into()));
    let mut rest = serde_json::to_string(&message).expect("a tool result serializes");
    let marks = [
        (Slot::Id, ID_MARK),
        (Slot::Text, TEXT_MARK),
        (Slot::Object, OBJECT_MARK),
    ]
    .map(|(slot, mark)| {
        (
            slot,
            serde_json::to_string(mark).expect("a string serializes"),
        )
    });
    // Each piece of text is followed by the slot that comes next in the message.
    let mut pieces = Vec::new();
    while let Some((at, slot, len)) = marks
        .iter()
        .filter_map(|(slot, mark)| rest.find(mark.as_str()).map(|at| (at, *slot, mark.len())))
        .min_by_key(|(at, _, _)| *at)
    {
        pieces.push((slot, rest[..at].to_owned()));
        rest = rest[at + len..].to_owned();
    }
    pieces.push((Slot::End, rest));
    pieces
});

#[derive(Clone, Copy)]
enum Slot {
    Id,
    Text,
    Object,
    End,
}

/// [`answer`] for a successful result whose structured content is the object `compact` (its
/// compact JSON) and whose text is that JSON: rmcp's frame for such a result, written once
/// around marks, with the id, `compact` as a string (already quoted, when the minifier made
/// it) and `compact` itself in their places. The bytes are those `answer` writes for
/// `CallToolResult::structured` of the parsed object.
fn answer_object(id: RequestId, compact: &Compact) -> HttpResponse {
    let mut body = Vec::with_capacity(2 * compact.json.len() + 256);
    for (slot, text) in OBJECT_FRAME.iter() {
        body.extend_from_slice(text.as_bytes());
        match slot {
            Slot::Id => serde_json::to_writer(&mut body, &id).expect("an id serializes"),
            Slot::Text => match &compact.quoted {
                Some(quoted) => body.extend_from_slice(quoted.as_bytes()),
                None => {
                    serde_json::to_writer(&mut body, &compact.json).expect("a string serializes")
                }
            },
            Slot::Object => body.extend_from_slice(compact.json.as_bytes()),
            Slot::End => {}
        }
    }
    response::json_bytes(StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    const PLAIN: &[(&str, &str)] = &[
        ("host", "127.0.0.1:9090"),
        ("content-type", "application/json"),
        ("content-length", "100"),
        ("accept", "application/json, text/event-stream"),
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "t"),
    ];

    fn body(params: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": params
        }))
        .unwrap()
    }

    fn meta() -> serde_json::Value {
        serde_json::json!({
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}
        })
    }

    #[tokio::test]
    async fn an_object_result_is_written_as_rmcp_writes_it() {
        let object = serde_json::json!({
            "id": "vs_1", "quote": "a \"b\" \\ c\n\u{1}", "é": ["ü", 1.5, -2, null, true],
            "nested": {"empty": {}, "list": []}
        });
        let json = object.to_string();
        let quoted = serde_json::to_string(&json).unwrap();
        for (id, quoted) in [
            (RequestId::Number(7), None),
            (RequestId::String("a \"quoted\" id".into()), None),
            (RequestId::Number(8), Some(quoted)),
        ] {
            let compact = Compact {
                json: json.clone(),
                quoted,
            };
            let direct = answer_object(id.clone(), &compact);
            let via_rmcp = answer(
                id,
                rmcp::model::CallToolResult::structured(object.clone()).into(),
            );
            let direct = direct.into_body().collect().await.unwrap().to_bytes();
            let via_rmcp = via_rmcp.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(direct, via_rmcp);
        }
    }

    #[test]
    fn only_plain_headers_take_the_direct_path() {
        assert!(plain_headers(&headers(PLAIN), 100));
        assert!(!plain_headers(&headers(PLAIN), 99), "over the size limit");
        for (name, value) in [
            ("mcp-session-id", "abc"),
            ("origin", "http://localhost:1"),
            ("mcp-param-session", "vs_1"),
            ("accept", "application/json;q=0"),
            ("mcp-method", "tools/call"),
            ("mcp-protocol-version", "2026-07-28"),
            ("accept", "text/plain; charset=utf-8"),
        ] {
            let mut map = headers(PLAIN);
            map.append(name, HeaderValue::from_static(value));
            assert!(!plain_headers(&map, 100), "{name}: {value}");
        }
        for missing in [
            "host",
            "content-length",
            "content-type",
            "accept",
            "mcp-protocol-version",
            "mcp-method",
        ] {
            let mut map = headers(PLAIN);
            map.remove(missing);
            assert!(!plain_headers(&map, 100), "without {missing}");
        }
        let mut old = headers(PLAIN);
        old.insert(
            "mcp-protocol-version",
            HeaderValue::from_static("2025-11-25"),
        );
        assert!(!plain_headers(&old, 100));
        let mut text = headers(PLAIN);
        text.insert("content-type", HeaderValue::from_static("text/plain"));
        assert!(!plain_headers(&text, 100));
        // Both media types may come in separate `Accept` values, and names in any case.
        let mut split = headers(PLAIN);
        split.insert("accept", HeaderValue::from_static("Application/JSON"));
        split.append("accept", HeaderValue::from_static("text/event-stream"));
        assert!(plain_headers(&split, 100));
        let mut only_json = headers(PLAIN);
        only_json.insert("accept", HeaderValue::from_static("application/json"));
        assert!(!plain_headers(&only_json, 100));
        for bad_host in ["[::1]:1:2", "[::1]%", "a b"] {
            let mut map = headers(PLAIN);
            map.insert("host", HeaderValue::from_static(bad_host));
            assert!(!plain_headers(&map, 100), "Host: {bad_host}");
        }
    }

    #[test]
    fn only_plain_tool_calls_are_recognised() {
        let plain = headers(PLAIN);
        let sent = body(serde_json::json!({"name": "t", "arguments": {"a": 1}, "_meta": meta()}));
        let call = ToolCall::recognise(&plain, &sent).expect("a plain call");
        assert_eq!(call.id, RequestId::Number(3));
        assert_eq!(call.params.arguments.unwrap()["a"], 1);

        let mut with_progress = meta();
        with_progress["progressToken"] = serde_json::json!(1);
        let mut old = meta();
        old["io.modelcontextprotocol/protocolVersion"] = serde_json::json!("2025-11-25");
        let mut no_capabilities = meta();
        no_capabilities
            .as_object_mut()
            .unwrap()
            .remove("io.modelcontextprotocol/clientCapabilities");
        for params in [
            serde_json::json!({"name": "t", "_meta": with_progress}),
            serde_json::json!({"name": "t", "_meta": old}),
            serde_json::json!({"name": "t", "_meta": no_capabilities}),
            serde_json::json!({"name": "t"}),
            serde_json::json!({"name": "other", "_meta": meta()}),
            serde_json::json!({"name": "t", "_meta": meta(), "task": {}}),
        ] {
            assert!(
                ToolCall::recognise(&plain, &body(params.clone())).is_none(),
                "{params}"
            );
        }
        let mut twice = headers(PLAIN);
        twice.append("mcp-name", HeaderValue::from_static("t"));
        let params = serde_json::json!({"name": "t", "_meta": meta()});
        assert!(ToolCall::recognise(&plain, &body(params.clone())).is_some());
        assert!(
            ToolCall::recognise(&twice, &body(params)).is_none(),
            "Mcp-Name twice"
        );
        assert!(ToolCall::recognise(&plain, b"[]").is_none(), "a batch");
        assert!(ToolCall::recognise(&plain, b"{").is_none());
    }
}
