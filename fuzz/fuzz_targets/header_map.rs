//! The engine's header-map blobs (`portcullis_engine::abi::decode_pairs`): what a
//! filter hands the host in `proxy_set_header_map_pairs`, `proxy_send_local_response`
//! and `proxy_dispatch_http_call`, and the host's `HeaderMap` they become.
//!
//! Invariants: decoding never reads past the blob (the pairs' bytes fit in it), and
//! decode(encode(decode(x))) == decode(x); a map built from the pairs encodes to what
//! it holds. Then the rest of the input drives add/set/remove/get on a `HeaderMap`
//! next to a plain list with Envoy's semantics (lower-cased names, set replaces the
//! first and drops the rest, remove drops all), through the side list's compaction and
//! values hyper's map cannot hold: the two must agree after every operation on each
//! name's values in order and on the pseudo-headers coming first, in order (the order
//! between two names is hyper's, which HTTP leaves without meaning). `fits`, the
//! `header_bytes` check, answers exactly whether an addition stays within a limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_engine::abi::{decode_pairs, encode_pairs};
use portcullis_engine::headers::{ENTRY_BYTES, HeaderMap};

const NAMES: [&[u8]; 8] = [b":path", b"x-a", b"X-A", b"x-B", b"cookie", b"", b"\xff\xfeX", b"a\0b"];

fn lower(name: &[u8]) -> Vec<u8> {
    if name.is_ascii() {
        name.to_ascii_lowercase()
    } else {
        String::from_utf8_lossy(name).to_ascii_lowercase().into_bytes()
    }
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Each name's values in order, the names sorted; and the pseudo-headers in order.
fn by_name(pairs: &[(Vec<u8>, Vec<u8>)]) -> (Vec<(Vec<u8>, Vec<Vec<u8>>)>, Pairs) {
    let mut names: Vec<(Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
    for (k, v) in pairs {
        match names.iter_mut().find(|(x, _)| x == k) {
            Some((_, vs)) => vs.push(v.clone()),
            None => names.push((k.clone(), vec![v.clone()])),
        }
    }
    names.sort();
    let pseudo = pairs.iter().filter(|(k, _)| k.first() == Some(&b':')).cloned();
    (names, pseudo.collect())
}

fn same(map: &HeaderMap, model: &[(Vec<u8>, Vec<u8>)]) {
    let got: Pairs = map.iter_bytes().map(|(k, v)| (k.to_vec(), v.to_vec())).collect();
    assert!(by_name(&got) == by_name(model), "map {map:?} differs from the model");
    let pseudo = got.iter().take_while(|(k, _)| k.first() == Some(&b':')).count();
    assert_eq!(pseudo, by_name(model).1.len(), "the pseudo-headers come first");
    assert_eq!(map.len(), model.len());
    assert_eq!(
        map.byte_size(),
        model.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    );
}

fuzz_target!(|data: &[u8]| {
    let mut model: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut map = HeaderMap::new();
    if let Ok(pairs) = decode_pairs(data) {
        let total: usize = pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
        // The empty blob is the empty map (no count at all).
        assert!(
            data.is_empty() || total + 4 + 8 * pairs.len() <= data.len(),
            "decoded more than the blob holds"
        );
        let again = encode_pairs(pairs.iter().copied());
        assert_eq!(decode_pairs(&again).as_ref(), Ok(&pairs));
        map = pairs.iter().copied().collect();
        model = pairs.iter().map(|(k, v)| (lower(k), v.to_vec())).collect();
        same(&map, &model);
        let blob = encode_pairs(map.iter_bytes());
        let back: HeaderMap = decode_pairs(&blob).expect("our own blob decodes").into_iter().collect();
        same(&back, &model);
    }

    // Operations: 3 bytes each (op, name, value length in 64-byte steps).
    for op in data.chunks_exact(3) {
        let name = NAMES[usize::from(op[1]) % NAMES.len()];
        let lowered = lower(name);
        let value = vec![op[2]; usize::from(op[2]) * 64];
        match op[0] % 4 {
            0 => {
                map.add(name, &value);
                model.push((lowered, value));
            }
            1 => {
                map.set(name, &value);
                match model.iter().position(|(k, _)| *k == lowered) {
                    None => model.push((lowered, value)),
                    Some(i) => {
                        model[i].1 = value;
                        let mut j = i + 1;
                        while j < model.len() {
                            if model[j].0 == lowered {
                                model.remove(j);
                            } else {
                                j += 1;
                            }
                        }
                    }
                }
            }
            2 => {
                let name = String::from_utf8_lossy(name);
                map.remove(&name);
                model.retain(|(k, _)| !k.eq_ignore_ascii_case(name.as_bytes()));
            }
            _ => {
                let name = String::from_utf8_lossy(name);
                let want = model
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
                    .map(|(_, v)| &v[..]);
                assert_eq!(map.get(&name), want);
                assert_eq!(
                    map.get_all(&name).count(),
                    model.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes())).count()
                );
                // The header_bytes check: exact, with limits on both sides of the size.
                let size: usize = model.iter().map(|(k, v)| k.len() + v.len() + ENTRY_BYTES).sum();
                assert_eq!(map.held_bytes(), size);
                let (extra, limit) = (value.len() / 4, (size + 1024).saturating_sub(value.len() / 8));
                let within = size + extra + ENTRY_BYTES <= limit;
                assert_eq!(map.fits(extra, limit), within, "fits({extra}, {limit}) at {size}");
            }
        }
        same(&map, &model);
    }
});
