//! The ledger's admission rule and bookkeeping, checked without Docker.

use super::*;

fn session(id: &str) -> SessionId {
    SessionId::parse(id).expect("valid session id")
}

/// A demand whose guarantee is its limit.
fn demand(cpu_cores: f64, memory_mb: u64) -> Demand {
    Demand::of(&Resources {
        cpu_cores,
        memory_mb,
        pids_limit: 64,
        cpu_request_cores: Some(cpu_cores),
        memory_request_mb: Some(memory_mb),
        ..Resources::default()
    })
}

fn ledger(max_containers: u32, cpu_cores: f64, memory_mb: u64) -> Ledger {
    Ledger::new(Capacity::new(max_containers, cpu_cores, memory_mb))
}

#[test]
fn warm_containers_count_against_capacity_and_move_to_the_session_that_claims_them() {
    let mut ledger = ledger(2, 8.0, 8192);
    let pool = session("pool-1");
    assert_eq!(
        ledger.admit(&pool, demand(1.0, 512), None),
        Ok(Admission::Reserved)
    );
    ledger.mark_warm(&pool, "c-warm", demand(1.0, 512));
    assert_eq!(
        ledger.usage(),
        Usage {
            containers: 1,
            cpu_millicores: 1000,
            memory_mb: 512,
            warm: 1,
            limit_cpu_millicores: 1000,
            limit_memory_mb: 512,
            pending_memory_mb: 0,
        }
    );
    assert!(ledger.claim_warm(&pool, &session("s")));
    assert_eq!(ledger.usage().warm, 0);
    assert_eq!(ledger.usage().containers, 1);
    // Claimed once: neither the pool id nor another session can take it again.
    assert!(!ledger.claim_warm(&pool, &session("t")));
    // The session holds it like a container it started: a repeat create adds nothing.
    assert_eq!(
        ledger.admit(&session("s"), demand(1.0, 512), None),
        Ok(Admission::AlreadyAllocated)
    );
    ledger.forget(&session("s"), "c-warm");
    assert_eq!(ledger.usage(), Usage::default());
}

#[test]
fn admits_until_the_container_limit() {
    let mut ledger = ledger(2, 8.0, 8192);
    assert_eq!(
        ledger.admit(&session("a"), demand(1.0, 256), None),
        Ok(Admission::Reserved)
    );
    assert_eq!(
        ledger.admit(&session("b"), demand(1.0, 256), None),
        Ok(Admission::Reserved)
    );
    let refusal = ledger
        .admit(&session("c"), demand(1.0, 256), None)
        .expect_err("third container is over the limit");
    assert_eq!(refusal, Refusal::Containers { running: 2, max: 2 });
    assert!(refusal.to_string().contains("max_containers 2"));
}

#[test]
fn refuses_cpu_and_memory_beyond_the_total() {
    let mut ledger = ledger(10, 2.0, 1024);
    ledger
        .admit(&session("a"), demand(1.5, 512), None)
        .expect("fits");
    let cpu = ledger
        .admit(&session("b"), demand(1.0, 256), None)
        .expect_err("cpu is short");
    assert!(matches!(cpu, Refusal::Cpu { .. }));
    assert!(cpu.to_string().contains("1.5 of 2 cores"), "{cpu}");
    let memory = ledger
        .admit(&session("b"), demand(0.5, 768), None)
        .expect_err("memory is short");
    assert!(matches!(memory, Refusal::Memory { .. }));
    assert!(memory.to_string().contains("MiB"), "{memory}");
    assert_eq!(
        ledger.admit(&session("b"), demand(0.5, 512), None),
        Ok(Admission::Reserved),
        "exactly the rest fits"
    );
}

#[test]
fn fractional_cores_add_up_exactly() {
    let mut ledger = ledger(10, 0.3, 1024);
    for id in ["a", "b", "c"] {
        assert_eq!(
            ledger.admit(&session(id), demand(0.1, 1), None),
            Ok(Admission::Reserved)
        );
    }
    assert_eq!(ledger.usage().cpu_millicores, 300);
}

#[test]
fn a_session_is_counted_once() {
    let mut ledger = ledger(1, 1.0, 256);
    ledger
        .admit(&session("a"), demand(1.0, 256), None)
        .expect("fits");
    assert_eq!(
        ledger.admit(&session("a"), demand(1.0, 256), None),
        Ok(Admission::AlreadyAllocated)
    );
    ledger.mark_running(&session("a"), "c1", demand(1.0, 256));
    assert_eq!(
        ledger.admit(&session("a"), demand(1.0, 256), None),
        Ok(Admission::AlreadyAllocated)
    );
    assert_eq!(ledger.usage().containers, 1);
}

#[test]
fn released_reservations_and_exited_containers_free_their_share() {
    let mut ledger = ledger(1, 1.0, 256);
    ledger
        .admit(&session("a"), demand(1.0, 256), None)
        .expect("fits");
    ledger.release(&session("a"));
    assert_eq!(ledger.usage(), Usage::default());

    ledger
        .admit(&session("b"), demand(1.0, 256), None)
        .expect("fits after release");
    ledger.mark_running(&session("b"), "c2", demand(1.0, 256));
    ledger.mark_exited(&session("b"), "other-container");
    assert_eq!(ledger.usage().containers, 1, "a stale id changes nothing");
    ledger.mark_exited(&session("b"), "c2");
    assert_eq!(ledger.usage(), Usage::default());

    // Restarting the exited container needs admission again, and a failed restart leaves it
    // exited rather than forgotten.
    assert_eq!(
        ledger.admit(&session("b"), demand(1.0, 256), None),
        Ok(Admission::Reserved)
    );
    ledger.release(&session("b"));
    assert_eq!(ledger.usage(), Usage::default());
    ledger.forget(&session("b"), "c2");
    assert!(ledger.allocations.is_empty());
}

#[test]
fn guarantees_not_limits_are_counted() {
    // python-basic's limits (1 core, 512 MiB) on a 2-core host: by limits two would fit,
    // by the default guarantees (1/64 core, 64 MiB) a hundred do.
    let mut ledger = ledger(500, 2.0, 22 * 1024);
    let basic = Demand::of(&Resources::default());
    for index in 0..100 {
        ledger
            .admit(&session(&format!("s{index}")), basic, None)
            .expect("fits by its guarantee");
    }
    let usage = ledger.usage();
    assert_eq!(usage.memory_mb, 100 * 64);
    assert_eq!(usage.limit_memory_mb, 100 * 512);
    assert_eq!(usage.limit_cpu_millicores, 100 * 1000);
    assert_eq!(usage.pending_memory_mb, 100 * 64, "none runs yet");
}

#[test]
fn a_host_short_of_memory_refuses_with_the_figures() {
    let mut ledger = ledger(10, 8.0, 8192);
    let host = HostMemory {
        available_mb: 1500,
        reserve_mb: 1024,
    };
    ledger
        .admit(&session("a"), demand(0.1, 256), Some(host))
        .expect("fits: 1500 - 256 >= 1024");
    let refusal = ledger
        .admit(&session("b"), demand(0.1, 256), Some(host))
        .expect_err("the first one's memory is promised already");
    assert!(matches!(refusal, Refusal::HostMemory { pending: 256, .. }));
    assert!(refusal.to_string().contains("short of memory"), "{refusal}");
    assert!(!ledger.has_room_for(demand(0.1, 256), 1, Some(host)));
    ledger.mark_running(&session("a"), "c1", demand(0.1, 256));
    assert!(ledger.has_room_for(demand(0.1, 256), 1, Some(host)));
}

#[test]
fn forgetting_leaves_a_newer_reservation_alone() {
    let mut ledger = ledger(5, 4.0, 4096);
    ledger.mark_running(&session("a"), "old", demand(1.0, 256));
    ledger.mark_exited(&session("a"), "old");
    ledger
        .admit(&session("a"), demand(1.0, 256), None)
        .expect("fits");
    ledger.forget(&session("a"), "old");
    assert_eq!(ledger.usage().containers, 1);
}
