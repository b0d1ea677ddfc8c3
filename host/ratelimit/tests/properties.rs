//! Properties of what the service reads from the network: any call body is either a
//! request or a clear gRPC error (never a panic), and distinct descriptors never
//! share a Redis key, whatever bytes their entries hold; the cluster slot of a key
//! is its hash tag's, which no entry can move.

use portcullis_ratelimit::{Failure, Plan, Rules, bucket_key, grpc::decode_call, plan};
use portcullis_rls::{Entry, RateLimitDescriptor, RateLimitOverride, RateLimitRequest, Unit};
use proptest::prelude::*;
use prost::Message;

fn entries() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((".{0,6}", ".{0,6}"), 1..4)
}

/// What Redis Cluster hashes for a key's slot: between the first `{` and the next
/// `}` when that is not empty, else the whole key.
fn hashed_part(key: &[u8]) -> &[u8] {
    if let Some(open) = key.iter().position(|&b| b == b'{')
        && let Some(len) = key[open + 1..].iter().position(|&b| b == b'}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

fn to_entries(v: &[(String, String)]) -> Vec<Entry> {
    v.iter()
        .map(|(k, v)| Entry {
            key: k.clone(),
            value: v.clone(),
        })
        .collect()
}

proptest! {
    #[test]
    fn any_call_body_is_a_request_or_a_grpc_error(body in prop::collection::vec(any::<u8>(), 0..300)) {
        match decode_call(&body) {
            Ok(_) => {}
            Err(f) => prop_assert!(
                f.code == Failure::INVALID_ARGUMENT || f.code == Failure::UNIMPLEMENTED,
                "{f:?}"
            ),
        }
    }

    #[test]
    fn a_valid_frame_around_any_message_bytes_decodes_or_is_invalid(msg in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut body = vec![0u8];
        body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
        body.extend_from_slice(&msg);
        if let Ok(req) = decode_call(&body) {
            // Whatever it decoded to, planning it answers or refuses cleanly.
            let _ = plan(&Rules::default(), "p:", &req);
        }
    }

    #[test]
    fn distinct_descriptors_never_share_a_key(a in entries(), b in entries(), domain in ".{0,5}") {
        let (ka, kb) = (
            bucket_key("p:", &domain, &to_entries(&a), Unit::Second),
            bucket_key("p:", &domain, &to_entries(&b), Unit::Second),
        );
        prop_assert_eq!(ka == kb, a == b);
    }

    #[test]
    fn planned_buckets_refill_at_the_limit_per_window(n in 1u32..1_000_000, unit in 1i32..=4, burst in 0u32..2_000_000) {
        let req = RateLimitRequest {
            domain: "d".into(),
            descriptors: vec![RateLimitDescriptor {
                entries: vec![Entry { key: "k".into(), value: "v".into() }, Entry { key: "burst".into(), value: burst.to_string() }],
                limit: Some(RateLimitOverride { requests_per_unit: n, unit }),
            }],
            hits_addend: 1,
        };
        let plans = plan(&Rules::default(), "p:", &req).unwrap();
        let Plan::Bucket(b) = &plans[0] else { panic!("{plans:?}") };
        let secs = [1.0, 60.0, 3600.0, 86400.0][(unit - 1) as usize];
        prop_assert!((b.rate * secs * 1e6 - f64::from(n)).abs() < 1e-6 * f64::from(n));
        prop_assert_eq!(b.limit.capacity, n.max(burst));
        let _ = RateLimitRequest::decode(&req.encode_to_vec()[..]).unwrap();
    }

    #[test]
    fn a_keys_slot_is_its_tag_and_windows_of_one_consumer_share_it(
        head in prop::collection::vec(("[{}a-z:]{0,4}", "[{}a-z:]{0,4}"), 0..3),
        last_a in ("[{}a-z:]{0,4}", "[{}a-z:]{0,4}"),
        last_b in ("[{}a-z:]{0,4}", "[{}a-z:]{0,4}"),
        domain in "[{}a-z]{0,4}",
    ) {
        let mut a = head.clone();
        a.push(last_a);
        let mut b = head.clone();
        b.push(last_b);
        let (ka, kb) = (
            bucket_key("p:", &domain, &to_entries(&a), Unit::Second),
            bucket_key("p:", &domain, &to_entries(&b), Unit::Day),
        );
        // Braces in the domain or the entries never reach the hashed part: it is the
        // 16 hex digits the service put right after the prefix.
        let tag = hashed_part(&ka);
        prop_assert_eq!(tag.len(), 16);
        prop_assert!(tag.iter().all(u8::is_ascii_hexdigit));
        prop_assert_eq!(&ka[..3], b"p:{");
        // Descriptors differing only in their last entry (a consumer's windows) share
        // the slot when they have more than one entry.
        if !head.is_empty() {
            prop_assert_eq!(hashed_part(&ka), hashed_part(&kb));
        }
    }
}
