// Conformance cases written with the AssemblyScript SDK (@solo-io/proxy-runtime): a
// second SDK, with its own allocator and its own use of the ABI (0.2.0 exports,
// wasi_unstable imports). The parity suite runs it in our host and in Envoy and compares
// what the client and the upstream saw. A request picks its case by path: /case/NAME.
export * from "@solo-io/proxy-runtime/proxy";
import {
  RootContext, Context, registerRootContext, FilterHeadersStatusValues,
  FilterDataStatusValues, stream_context, send_local_response, GrpcStatusValues,
  HeaderPair, Headers, Counter, LogLevelValues, log, continue_request,
} from "@solo-io/proxy-runtime";
import * as imports from "@solo-io/proxy-runtime/imports";
import {
  get_buffer_bytes, get_buffer_status, set_tick_period_milliseconds, get_property
}
  from "@solo-io/proxy-runtime/runtime";

// Buffer types and header map types of the ABI.
const REQUEST_BODY: u32 = 0;
const CALL_RESPONSE_HEADERS: u32 = 4;

let ticks: u32 = 0;
// `vm-counter` requests the VM has seen, through either root context: two plugins in
// one VM share the module's memory.
let served: u32 = 0;
let requests: Counter | null = null;

function pairs(list: string[]): Headers {
  let out: Headers = [];
  for (let i = 0; i < list.length; i += 2) {
    out.push(new HeaderPair(String.UTF8.encode(list[i]), String.UTF8.encode(list[i + 1])));
  }
  return out;
}

// The ABI's pairs encoding: a count, each name's and value's length, then each name and
// value followed by a NUL.
function encodePairs(list: Headers): ArrayBuffer {
  let size = 4 + 8 * list.length;
  for (let i = 0; i < list.length; i++) {
    size += list[i].key.byteLength + list[i].value.byteLength + 2;
  }
  let out = new ArrayBuffer(size);
  let at = changetype<usize>(out);
  store<u32>(at, list.length);
  let data = at + 4 + 8 * list.length;
  for (let i = 0; i < list.length; i++) {
    let k = list[i].key;
    let v = list[i].value;
    store<u32>(at + 4 + 8 * i, k.byteLength);
    store<u32>(at + 8 + 8 * i, v.byteLength);
    memory.copy(data, changetype<usize>(k), k.byteLength);
    data += k.byteLength;
    store<u8>(data, 0);
    data += 1;
    memory.copy(data, changetype<usize>(v), v.byteLength);
    data += v.byteLength;
    store<u8>(data, 0);
    data += 1;
  }
  return out;
}

function reply(status: u32, body: string, headers: string[]): void {
  send_local_response(status, "as-conformance", String.UTF8.encode(body), pairs(headers),
    GrpcStatusValues.Unknown);
}

// Shared data through the ABI directly (the SDK's own wrappers pass the wrong arguments).
function setShared(key: string, value: string): u32 {
  let k = String.UTF8.encode(key);
  let v = String.UTF8.encode(value);
  return imports.proxy_set_shared_data(changetype<usize>(k), k.byteLength,
    changetype<usize>(v), v.byteLength, 0);
}

function getShared(key: string): string {
  let k = String.UTF8.encode(key);
  let out = new ArrayBuffer(12);
  let at = changetype<usize>(out);
  let status = imports.proxy_get_shared_data(changetype<usize>(k), k.byteLength, at, at + 4, at + 8);
  if (status != 0) {
    return "<status " + status.toString() + ">";
  }
  let size = load<u32>(at + 4);
  if (size == 0) {
    return "";
  }
  // The host wrote the value into memory it asked our allocator for.
  let value = new ArrayBuffer(size);
  memory.copy(changetype<usize>(value), load<u32>(at), size);
  return String.UTF8.decode(value);
}

class CaseRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Case(context_id, this);
  }

  onConfigure(configuration_size: u32): bool {
    super.onConfigure(configuration_size);
    requests = new Counter("as_conformance_requests");
    set_tick_period_milliseconds(20);
    return true;
  }

  onTick(): void {
    ticks += 1;
  }
}

function callDone(origin: Context, headers: u32, body_size: usize, trailers: u32): void {
  let status = stream_context.headers.http_callback.get(":status");
  let c = origin as Case;
  c.callStatus = status;
  c.callBodySize = body_size;
  continue_request();
}

class Case extends Context {
  name: string = "";
  served: u32 = 0;
  callStatus: string = "";
  callBodySize: usize = 0;

  constructor(context_id: u32, root_context: CaseRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    let path = stream_context.headers.request.get(":path");
    let q = path.indexOf("?");
    let bare = q >= 0 ? path.substring(0, q) : path;
    this.name = bare.startsWith("/case/") ? bare.substring(6) : "";
    let req = stream_context.headers.request;
    if (requests != null) {
      (requests as Counter).increment(1);
    }
    if (this.name == "vm-counter") {
      served += 1;
      this.served = served;
      return FilterHeadersStatusValues.Continue;
    }
    if (this.name == "headers") {
      req.add("x-added", "1");
      req.replace("x-replace", "new");
      req.remove("x-remove");
      req.add("x-seen-multi", req.get("x-multi"));
      req.add("x-missing-is-empty", (req.get("x-missing") == "").toString());
      return FilterHeadersStatusValues.Continue;
    }
    if (this.name == "pairs") {
      let all = req.get_headers();
      let kept: Headers = [];
      for (let i = 0; i < all.length; i++) {
        let k = String.UTF8.decode(all[i].key);
        if (!k.startsWith("x-drop")) {
          kept.push(all[i]);
        }
      }
      kept.push(new HeaderPair(String.UTF8.encode("x-from-pairs"), String.UTF8.encode("yes")));
      // The SDK's `set_headers` does not compile (0.1.8); the ABI call it would make.
      let buf = encodePairs(kept);
      imports.proxy_set_header_map_pairs(0, changetype<usize>(buf), buf.byteLength);
      return FilterHeadersStatusValues.Continue;
    }
    if (this.name == "local-reply") {
      reply(403, "denied by as", ["x-reason", "as-case"]);
      return FilterHeadersStatusValues.StopIteration;
    }
    if (this.name == "shared") {
      let set = setShared("as-key", "as-value");
      reply(200, "set " + set.toString() + " got " + getShared("as-key") + " missing "
        + getShared("as-missing"), []);
      return FilterHeadersStatusValues.StopIteration;
    }
    if (this.name == "http-call") {
      let cluster = this.root_context.getConfiguration();
      let headers = pairs([":method", "GET", ":path", "/from-as-call", ":authority", "as.test"]);
      let r = this.root_context.httpCall(cluster, headers, new ArrayBuffer(0), [], 5000, this,
        callDone);
      if (r != 0) {
        reply(500, "http_call refused " + r.toString(), []);
      }
      return FilterHeadersStatusValues.StopIteration;
    }
    if (this.name == "tick") {
      reply(200, ticks > 0 ? "ticked" : "no tick yet", []);
      return FilterHeadersStatusValues.StopIteration;
    }
    if (this.name == "metrics") {
      // The SDK's own `get_metric` records instead of reading (0.1.8): the ABI call.
      let id = (requests as Counter).metric_id;
      let out = new ArrayBuffer(8);
      let status = imports.proxy_get_metric(id, changetype<usize>(out));
      reply(200, "status " + status.toString() + " requests " + load<u64>(changetype<usize>(out)).toString(), []);
      return FilterHeadersStatusValues.StopIteration;
    }
    if (this.name == "props") {
      reply(200, "root_id " + String.UTF8.decode(get_property("plugin_root_id")), []);
      return FilterHeadersStatusValues.StopIteration;
    }
    return FilterHeadersStatusValues.Continue;
  }

  onRequestBody(body_buffer_length: usize, end_of_stream: bool): FilterDataStatusValues {
    if (this.name != "body") {
      return FilterDataStatusValues.Continue;
    }
    if (!end_of_stream) {
      return FilterDataStatusValues.StopIterationAndBuffer;
    }
    let size = get_buffer_status(REQUEST_BODY).length;
    let body = String.UTF8.decode(get_buffer_bytes(REQUEST_BODY, 0, size as u32));
    reply(200, "body of " + size.toString() + ": " + body, []);
    return FilterDataStatusValues.StopIterationNoBuffer;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    if (this.name == "vm-counter") {
      stream_context.headers.response.add("x-as-first", this.served.toString());
    }
    if (this.name == "http-call") {
      stream_context.headers.response.add("x-call-status", this.callStatus);
      // Whether a body came (its size depends on what each host adds to the request).
      stream_context.headers.response.add("x-call-has-body", (this.callBodySize > 0).toString());
    }
    stream_context.headers.response.add("x-as-case", this.name);
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32): RootContext => {
  return new CaseRoot(context_id);
}, "as_conformance");

// A second root context in the same module, picked by root_id `as_second`: it counts
// `vm-counter` requests with the first one.
class SecondRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new SecondCase(context_id, this);
  }
}

class SecondCase extends Context {
  served: u32 = 0;

  constructor(context_id: u32, root_context: SecondRoot) {
    super(context_id, root_context);
  }

  onRequestHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    if (stream_context.headers.request.get(":path").startsWith("/case/vm-counter")) {
      served += 1;
      this.served = served;
    }
    return FilterHeadersStatusValues.Continue;
  }

  onResponseHeaders(a: u32, end_of_stream: bool): FilterHeadersStatusValues {
    if (this.served > 0) {
      stream_context.headers.response.add("x-as-second", this.served.toString());
    }
    return FilterHeadersStatusValues.Continue;
  }
}

registerRootContext((context_id: u32): RootContext => {
  return new SecondRoot(context_id);
}, "as_second");
