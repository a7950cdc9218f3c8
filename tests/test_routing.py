"""Family-to-topic routing, including the newer MyTPE API generation's event names."""

from __future__ import annotations

import pytest

from relay.mytpe.payload import Unusable, parse
from relay.routing import Route, Router, parse_route, routes_for
from relay.settings import ConfigError, KafkaTarget, Settings
from tests.helpers import SECRET

NEW_GENERATION = "payment_link=pay_link,trader=kyc@trader.id,identification=kyc"


def body(event: str, data: str) -> bytes:
    return f'{{"delivery_id":"d-1","event":"{event}","data":{data}}}'.encode()


def router(spec: str = NEW_GENERATION) -> Router:
    return Settings.from_env({"RELAY_MYTPE_SECRETS": SECRET, "RELAY_ROUTES": spec}).router()


def test_route_entries_parse_and_print_back() -> None:
    assert parse_route("payment_link=pay_link") == Route("payment_link", "pay_link")
    assert parse_route(" trader = kyc @ trader.profile.id ") == Route("trader", "kyc", ("trader", "profile", "id"))
    for spec in ("payment_link=pay_link", "trader=kyc@trader.profile.id"):
        assert parse_route(spec).spec() == spec


@pytest.mark.parametrize(
    "entry",
    ["payment_link", "Payment=x", "x=", "x=dlq", "x=Topic", "x=t@", "x=t@a..b", "x=t@a b", "=t"],
)
def test_bad_route_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match=r"expected|topic suffix|key path"):
        parse_route(entry)


def test_settings_name_the_variable_of_a_bad_route() -> None:
    with pytest.raises(ConfigError, match="RELAY_ROUTES"):
        Settings.from_env({"RELAY_MYTPE_SECRETS": SECRET, "RELAY_ROUTES": "trader=kyc,trader=other"})
    with pytest.raises(ConfigError, match="RELAY_ROUTES"):
        Settings.from_env({"RELAY_MYTPE_SECRETS": SECRET, "RELAY_ROUTES": "trader"})


def test_new_generation_events_reach_the_configured_topics() -> None:
    routes = router()
    paid = routes.resolve(parse(body("transaction.paid", '{"transaction":{"id":"tx-9"}}'), "h"))
    assert (paid.topic, paid.key, paid.entity_id) == ("mytpe.transaction", "tx-9", "tx-9")
    link = routes.resolve(parse(body("payment_link.exhausted", '{"payment_link":{"id":"pl-1"}}'), "h"))
    assert (link.topic, link.key) == ("mytpe.pay_link", "pl-1")
    trader = routes.resolve(parse(body("trader.onboarding_changed", '{"trader":{"id":"tr-1"},"id":"x"}'), "h"))
    assert (trader.topic, trader.key) == ("mytpe.kyc", "tr-1")
    kyc = routes.resolve(parse(body("identification.approved", '{"id":"idn-4","status":"accepted"}'), "h"))
    assert (kyc.topic, kyc.key) == ("mytpe.kyc", "idn-4")  # flat data: the default falls back to data.id


def test_an_explicit_key_path_does_not_fall_back() -> None:
    trader = router().resolve(parse(body("trader.onboarding_changed", '{"id":"not-this-one"}'), "h"))
    assert (trader.key, trader.entity_id) == ("d-1", None)


def test_families_sharing_a_topic_list_it_once_and_defaults_stay() -> None:
    assert router().topics() == ["mytpe.kyc", "mytpe.pay_link", "mytpe.transaction", "mytpe.dlq"]
    defaults = Settings.from_env({"RELAY_MYTPE_SECRETS": SECRET}).router()
    assert defaults.topics() == ["mytpe.pay_link", "mytpe.transaction", "mytpe.dlq"]
    with pytest.raises(Unusable, match="unroutable_event"):
        defaults.resolve(parse(body("payment_link.exhausted", '{"payment_link":{"id":"pl-1"}}'), "h"))


def test_a_route_overrides_the_family_default() -> None:
    routes = Router("p", routes_for(["transaction"], [Route("transaction", "payments")]))
    assert routes.topics() == ["p.payments", "p.dlq"]


def test_tools_without_secrets_see_the_same_topics() -> None:
    target = KafkaTarget.from_env({"RELAY_ROUTES": NEW_GENERATION, "RELAY_TOPIC_PREFIX": "acme"})
    assert target.topics() == ["acme.kyc", "acme.pay_link", "acme.transaction", "acme.dlq"]
