use super::*;

#[test]
fn columns_pick_the_first_rule_that_matches() {
    let sequencer = [
        "sequencer.messages_sequenced",
        "sequencer.ack_ring_full",
        "ring_full",
        "gateway_rejects",
        "sequencer.gateway_rejects",
        "logins_rejected",
        "sessions_active",
        "replay.clients_active",
    ];
    let find = |key: &str, names: &[&str]| {
        let column = COLUMNS.iter().find(|c| c.key == key).unwrap();
        column_indexes(column, names)
    };
    assert_eq!(find("messages", &sequencer), vec![0]);
    assert_eq!(find("ring_full", &sequencer), vec![1, 2]);
    // The sequencer's copy of the gateway rejects is not counted twice.
    assert_eq!(find("rejects", &sequencer), vec![3, 5]);
    assert_eq!(find("sessions", &sequencer), vec![6, 7]);
    assert!(find("gaps", &sequencer).is_empty());
    // A receiver with an order-entry client (apps: consumer.rs, client.rs).
    let receiver = [
        "consumer.next_seq",
        "consumer.lag",
        "consumer.datagrams",
        "consumer.messages_delivered",
        "consumer.gaps_detected",
        "consumer.re_requests_sent",
        "client.sessions_active",
        "client.acks_rejected",
    ];
    assert_eq!(find("messages", &receiver), vec![3]);
    assert_eq!(find("packets", &receiver), vec![2]);
    assert_eq!(find("gaps", &receiver), vec![4]);
    assert_eq!(find("retransmits", &receiver), vec![5]);
    assert_eq!(find("sessions", &receiver), vec![6]);
    assert_eq!(find("rejects", &receiver), vec![7]);
    assert_eq!(find("lag", &receiver), vec![1]);
    assert!(is_gauge("consumer.lag") && is_gauge("consumer.next_seq"));
    assert!(is_gauge("agent.orders.max_cycle_ns") && !is_gauge("agent.orders.cycles"));
}

#[test]
fn proc_stat_start_time_survives_odd_command_names() {
    let stat = "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
    assert_eq!(process_start_ticks(stat), Some(987_654));
    assert_eq!(process_state(stat), Some('S'));
}

#[test]
fn rates_and_ages_read_well() {
    assert_eq!(format_rate(0.0), "0");
    assert_eq!(format_rate(2.5), "2.5");
    assert_eq!(format_rate(1234.4), "1234");
    assert_eq!(format_rate(25_000_000.0), "25.0M");
    assert_eq!(age(5_000_000_000), "5s");
    assert_eq!(age(600_000_000_000), "10m");
}
