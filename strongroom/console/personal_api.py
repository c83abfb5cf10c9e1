"""REST endpoints of a person's own settings (docs/api.md, "Personal settings and alerts").

Every endpoint acts on the caller's own data only: the username comes from the
signed request (or the console session), never from the path or the body.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, current_app, request
from flask.typing import ResponseReturnValue

from custody.api.auth import json_response, principal, secured
from custody.api.errors import ApiError, RequestCode
from custody.api.request import json_object, query_int
from custody.api.schema import BOOL, INT, OBJECT, STR, accepts, answers, array, nullable, obj
from policies.api_key import Scope
from policies.roles import Permission
from strongroom.console.alert_service import DELIVERY_STATES, AlertService
from strongroom.console.alerts import DIRECTIONS, KINDS, MAX_DISTANCE_BPS, PPM, SOURCES
from strongroom.console.preferences import (
    CANDLE_INTERVALS,
    MARGIN_MODES,
    MAX_LEVERAGE,
    ORDER_TYPES,
    PANELS,
    THEMES,
    UNITS,
    SettingsStore,
)

bp = Blueprint("personal", __name__, url_prefix="/api/v1")
SETTINGS_EXTENSION = "strongroom.console.settings"
ALERTS_EXTENSION = "strongroom.console.alerts"



def _enum(values: tuple[str, ...]) -> dict[str, object]:
    return {"type": "string", "enum": list(values)}


SETTINGS_FIELDS = {
    "theme": _enum(THEMES), "units": _enum(UNITS),
    "panels": {**array(_enum(PANELS)), "minItems": 1, "maxItems": len(PANELS), "uniqueItems": True},
    "default_leverage": {"type": "integer", "minimum": 1, "maximum": MAX_LEVERAGE},
    "default_margin_mode": _enum(MARGIN_MODES), "default_order_type": _enum(ORDER_TYPES),
    "candle_interval": _enum(CANDLE_INTERVALS),
}
SETTINGS_SCHEMA = {**obj({}, SETTINGS_FIELDS), "additionalProperties": False}
SETTINGS_ANSWER = obj({"settings": obj(SETTINGS_FIELDS)})



def settings_store() -> SettingsStore:
    found: SettingsStore = current_app.extensions[SETTINGS_EXTENSION]
    return found


@bp.get("/settings")
@secured(Permission.SETTINGS_MANAGE_OWN, scope=Scope.READ, mfa=False)
@answers({"200": SETTINGS_ANSWER})
def get_settings() -> ResponseReturnValue:
    """Return your personal settings (defaults for fields you never set)."""
    return json_response({"settings": settings_store().get(principal().username).to_json()})


@bp.post("/settings")
@secured(Permission.SETTINGS_MANAGE_OWN, scope=Scope.TRADE, mfa=False)
@accepts(SETTINGS_SCHEMA)
@answers({"200": SETTINGS_ANSWER})
def update_settings() -> ResponseReturnValue:
    """Change some of your settings; fields you leave out keep their value. All or nothing."""
    updated = settings_store().update(principal().username, json_object())
    return json_response({"settings": updated.to_json()})


# ------------------------------------------------------------------ alerts

RULE_VIEW = obj({"id": INT, "kind": _enum(KINDS), "webhook": BOOL},
                {"symbol": nullable(STR), "source": _enum(SOURCES), "direction": _enum(DIRECTIONS),
                 "price": STR, "threshold_ppm": INT, "distance_bps": INT})
RULE_SCHEMA = {**obj({"kind": _enum(KINDS)}, {
    "symbol": {"type": "string", "maxLength": 32}, "source": _enum(SOURCES), "direction": _enum(DIRECTIONS),
    "price": {"type": "string", "pattern": "^[0-9]+(\\.[0-9]{1,6})?$"},
    "threshold_ppm": {"type": "integer", "minimum": 1, "maximum": PPM},
    "distance_bps": {"type": "integer", "minimum": 1, "maximum": MAX_DISTANCE_BPS}, "webhook": BOOL}),
    "additionalProperties": False}
NOTIFICATION = obj({"id": INT, "rule_id": INT, "kind": _enum(KINDS), "message": STR, "data": OBJECT,
                    "time_ms": INT})
WEBHOOK_VIEW = obj({"url": STR, "created_ms": INT})
DELIVERY = obj({"id": STR, "state": _enum(DELIVERY_STATES), "attempts": INT, "next_attempt_ms": nullable(INT),
                "last_error": nullable(STR), "created_ms": INT, "updated_ms": INT})


def alert_service() -> AlertService:
    found: AlertService = current_app.extensions[ALERTS_EXTENSION]
    return found


@bp.get("/alerts")
@secured(Permission.SETTINGS_MANAGE_OWN, scope=Scope.READ, mfa=False)
@answers({"200": obj({"rules": array(RULE_VIEW)})})
def list_alerts() -> ResponseReturnValue:
    """List your alert rules."""
    return json_response({"rules": [r.to_json() for r in alert_service().rules(principal().username)]})


@bp.post("/alerts")
@secured(Permission.SETTINGS_MANAGE_OWN, scope=Scope.TRADE, mfa=False)
@accepts(RULE_SCHEMA)
@answers({"201": obj({"rule": RULE_VIEW})})
def create_alert() -> ResponseReturnValue:
    """Create an alert rule for yourself (docs/console.md, "Alerts")."""
    caller = principal()
    rule = alert_service().create_rule(caller.username, caller.user.roles, json_object())
    return json_response({"rule": rule.to_json()}, 201)


@bp.delete("/alerts/<int:rule_id>")
@secured(Permission.SETTINGS_MANAGE_OWN, scope=Scope.TRADE, mfa=False)
@answers({"200": obj({"deleted": INT})})
def delete_alert(rule_id: int) -> ResponseReturnValue:
    """Delete one of your alert rules (another person's is not found)."""
    alert_service().delete_rule(principal().username, rule_id)
    return json_response({"deleted": rule_id})


@bp.get("/notifications")
@secured(Permission.SETTINGS_MANAGE_OWN, scope=Scope.READ, mfa=False)
@answers({"200": obj({"notifications": array(NOTIFICATION)})})
def list_notifications() -> ResponseReturnValue:
    """List your fired alerts, newest first (``limit`` 1..200, default 50)."""
    limit = query_int("limit", 50, low=1, high=200)
    return json_response({"notifications": alert_service().notifications(principal().username, limit)})


@bp.post("/alert-webhook")
@secured(Permission.SETTINGS_MANAGE_OWN, scope=Scope.TRADE, mfa=True)
@accepts({**obj({"url": {"type": "string", "maxLength": 512}}), "additionalProperties": False})
@answers({"201": obj({"webhook": WEBHOOK_VIEW, "secret": STR})})
def set_webhook() -> ResponseReturnValue:
    """Set your alert webhook URL; a new signing secret is in this response only (TOTP required)."""
    body = json_object()
    if set(body) != {"url"}:
        raise ApiError(RequestCode.INVALID_FIELD, "send exactly one field: url")
    view, secret = alert_service().set_webhook(principal().username, body["url"])
    return json_response({"webhook": view, "secret": secret}, 201)


@bp.get("/alert-webhook")
@secured(Permission.SETTINGS_MANAGE_OWN, scope=Scope.READ, mfa=False)
@answers({"200": obj({"webhook": WEBHOOK_VIEW})})
def get_webhook() -> ResponseReturnValue:
    """Return your webhook URL (never its secret)."""
    return json_response({"webhook": alert_service().webhook(principal().username)})


@bp.get("/alert-webhook/deliveries")
@secured(Permission.SETTINGS_MANAGE_OWN, scope=Scope.READ, mfa=False)
@answers({"200": obj({"deliveries": array(DELIVERY)})})
def list_deliveries() -> ResponseReturnValue:
    """List your webhook deliveries, newest first (``state`` pending|delivered|dead filters)."""
    state = request.args.get("state")
    if state is not None and state not in DELIVERY_STATES:
        raise ApiError(RequestCode.INVALID_FIELD, f"state was {state[:20]!r}, must be one of "
                       f"{', '.join(DELIVERY_STATES)}")
    limit = query_int("limit", 50, low=1, high=200)
    return json_response({"deliveries": alert_service().deliveries(principal().username, state, limit)})


def init_app(app: Flask) -> None:
    """Register the endpoints and the stores they use on ``app``."""
    sessions = app.extensions["strongroom.sessions"]
    app.extensions[SETTINGS_EXTENSION] = SettingsStore(sessions, app.extensions["strongroom.clock"])
    app.extensions[ALERTS_EXTENSION] = build_alert_service(app)
    app.register_blueprint(bp)


def build_alert_service(app: Flask) -> AlertService:
    """Wire the alert service to the exchange's read model, the withdrawal flow and the streams."""
    from custody.access.secret_box import SecretBox

    service = AlertService(app.extensions["strongroom.sessions"], app.extensions["strongroom.clock"],
                           SecretBox(app.extensions["strongroom.keystore"]),
                           allowlist=frozenset(app.config.get("ALERT_WEBHOOK_TEST_ALLOWLIST") or ()))
    exchange = app.extensions.get("strongroom.exchange")
    if exchange is not None:
        _attach_exchange(app, service, exchange)
    return service


def _attach_exchange(app: Flask, service: AlertService, exchange: Any) -> None:
    from exchange.api.marketdata import FEED_EXTENSION
    from exchange.api.streamfeed import withdrawal_poller
    from exchange.marketdata import owner_of
    from exchange.summary import account_summary, position_views
    from strongroom.console.alerts import Risk

    market = exchange.market
    service.market = market  # listened to while some rule exists (AlertService._reload)
    service.catch_up = market.catch_up
    service._owner_of = owner_of

    def risk_of(username: str) -> Risk | None:
        with exchange.lock:
            summary = account_summary(exchange.venue, username)
            positions = position_views(exchange.venue, username)
        return Risk(summary.get("margin_ratio_ppm"),
                    tuple((p["symbol"], p["mark"], p["liquidation_price"]) for p in positions))

    def publish(messages: list[Any]) -> None:
        feed = app.extensions.get(FEED_EXTENSION)
        if feed is not None:
            feed.publish(messages)

    service.risk_of = risk_of
    service.poll = withdrawal_poller(app)
    service.publish = publish
