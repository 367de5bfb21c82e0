use super::*;
use tally_wire::Order;

fn client() -> OrderEntryClient {
    let config = ClientConfig::new("127.0.0.1:1".parse().unwrap(), "pos1", "pos1pass");
    OrderEntryClient::new(config).unwrap()
}

fn login(client: &mut OrderEntryClient, next_seq: u64) -> Vec<ClientEvent> {
    let mut events = Vec::new();
    client.state.link = Link::LoggingIn;
    client
        .state
        .on_login_accepted(next_seq, &mut |event| events.push(event));
    events
}

fn ack(client: &mut OrderEntryClient, client_seq: u32) -> Vec<ClientEvent> {
    let mut events = Vec::new();
    let ack = Ack {
        client_seq,
        stream_seq: 100 + u64::from(client_seq),
        timestamp_ns: 1,
        reject: None,
    };
    client.state.on_ack(ack, &mut |event| events.push(event));
    events
}

#[test]
fn commands_are_numbered_from_login_accepted_and_stamped() {
    let mut client = client();
    assert_eq!(
        client.queue(Order::new(1, 1, 9, 1).as_bytes()),
        Err(ClientError::Disconnected)
    );
    let events = login(&mut client, 5);
    assert_eq!(
        events,
        [ClientEvent::LoggedIn {
            next_client_seq: 5,
            resending: 0
        }]
    );
    let mut stamped = Order::new(1, 1, 9, 1);
    stamped.header.origin.set(77);
    stamped.header.timestamp_ns.set(123);
    assert_eq!(client.queue(stamped.as_bytes()), Ok(5));
    assert_eq!(client.queue(stamped.as_bytes()), Ok(6));
    let slot = client.state.slot(6);
    let order = tally_wire::Message::parse(slot).unwrap();
    assert_eq!(order.header().client_seq.get(), 6);
    assert_eq!(order.header().origin.get(), 0);
    assert_eq!(order.header().timestamp_ns.get(), 0);
    assert_eq!(&slot[15..], &stamped.as_bytes()[15..], "body untouched");
    assert_eq!(client.unacked(), 2);
}

#[test]
fn acks_retire_commands_in_order_and_a_skipped_one_is_reported() {
    let mut client = client();
    login(&mut client, 1);
    for i in 1..=4 {
        client.queue(Order::new(i, 1, 9, 1).as_bytes()).unwrap();
    }
    assert!(matches!(
        ack(&mut client, 1)[..],
        [ClientEvent::Ack(Ack { client_seq: 1, .. })]
    ));
    let events = ack(&mut client, 3);
    assert_eq!(events.len(), 2);
    assert_eq!(events[0], ClientEvent::AckUnavailable { client_seq: 2 });
    assert!(matches!(
        events[1],
        ClientEvent::Ack(Ack { client_seq: 3, .. })
    ));
    assert!(ack(&mut client, 3).is_empty(), "a duplicate ack is dropped");
    assert!(
        ack(&mut client, 9).is_empty(),
        "an ack for nothing sent is dropped"
    );
    let stats = client.stats();
    assert_eq!((stats.duplicate_acks, stats.unexpected_acks), (1, 1));
    assert_eq!(client.first_unacked(), 4);
}

#[test]
fn a_reconnect_resends_from_the_appliance_next_number_only() {
    let mut client = client();
    login(&mut client, 1);
    for i in 1..=6 {
        client.queue(Order::new(i, 1, 9, 1).as_bytes()).unwrap();
    }
    client.state.sent_up_to = 7; // all written on the first connection
    ack(&mut client, 1);
    ack(&mut client, 2);
    // The connection drops; 3 and 4 were sequenced, 5 and 6 were not.
    let events = login(&mut client, 5);
    assert_eq!(
        events,
        [ClientEvent::LoggedIn {
            next_client_seq: 5,
            resending: 2
        }]
    );
    assert_eq!(client.state.sent_up_to, 5, "resend from 5");
    assert_eq!(
        client.first_unacked(),
        3,
        "3 and 4 await their replayed acks"
    );
}

#[test]
fn a_login_that_contradicts_the_numbering_stops_the_client() {
    for next in [2u64, 9] {
        let mut client = client();
        login(&mut client, 1);
        for i in 1..=4 {
            client.queue(Order::new(i, 1, 9, 1).as_bytes()).unwrap();
        }
        ack(&mut client, 1);
        ack(&mut client, 2);
        let events = login(&mut client, next);
        let expected = ClientError::NumberingConflict {
            appliance_next: next,
            client_next: 5,
        };
        assert_eq!(events, [ClientEvent::Closed(expected)], "next {next}");
        assert_eq!(client.closed(), Some(expected));
        assert_eq!(
            client.send(Order::new(9, 1, 9, 1).as_bytes()),
            Err(expected)
        );
    }
}

#[test]
fn the_window_bounds_unacknowledged_commands() {
    let mut config = ClientConfig::new("127.0.0.1:1".parse().unwrap(), "pos1", "pos1pass");
    config.window = 3;
    let mut client = OrderEntryClient::new(config).unwrap();
    login(&mut client, 1);
    for _ in 0..3 {
        client.queue(Order::new(1, 1, 9, 1).as_bytes()).unwrap();
    }
    assert_eq!(
        client.queue(Order::new(1, 1, 9, 1).as_bytes()),
        Err(ClientError::WindowFull)
    );
    ack(&mut client, 1);
    assert_eq!(client.queue(Order::new(1, 1, 9, 1).as_bytes()), Ok(4));
}

#[test]
fn counters_are_published_under_their_names() {
    let file = tally_runtime::counters::CounterFile::in_memory(ClientCounters::NAMES);
    let counters = ClientCounters::from_file(&file, 0);
    let mut client = client();
    login(&mut client, 1);
    client.queue(Order::new(1, 1, 9, 1).as_bytes()).unwrap();
    counters.publish(&client);
    assert_eq!(
        file.counter_by_name("client.sessions_active")
            .unwrap()
            .get(),
        1
    );
    assert_eq!(file.counter_by_name("client.commands").unwrap().get(), 1);
}

#[test]
fn credentials_that_do_not_fit_a_login_are_refused_up_front() {
    let config = ClientConfig::new("127.0.0.1:1".parse().unwrap(), "toolongname", "x");
    assert!(matches!(
        OrderEntryClient::new(config),
        Err(ClientError::InvalidCredentials)
    ));
}
