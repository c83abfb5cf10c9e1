"""REST endpoints of a person's own settings (docs/api.md, "Personal settings and alerts").

Every endpoint acts on the caller's own data only: the username comes from the
signed request (or the console session), never from the path or the body.
"""

from __future__ import annotations

from flask import Blueprint, Flask, current_app
from flask.typing import ResponseReturnValue

from custody.api.auth import json_response, principal, secured
from custody.api.request import json_object
from custody.api.schema import accepts, answers, array, obj
from policies.api_key import Scope
from policies.roles import Permission
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


def init_app(app: Flask) -> None:
    """Register the endpoints and the stores they use on ``app``."""
    sessions = app.extensions["strongroom.sessions"]
    app.extensions[SETTINGS_EXTENSION] = SettingsStore(sessions, app.extensions["strongroom.clock"])
    app.register_blueprint(bp)
