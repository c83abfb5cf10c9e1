"""The application factory: wires settings, database, services and blueprints."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from custody.access.service import AccessServices
from custody.api import access as access_api
from custody.api import audit as audit_api
from custody.api import ledger as ledger_api
from custody.api import openapi as openapi_api
from custody.api import policy as policy_api
from custody.api import wallets as wallets_api
from custody.api import withdrawals as withdrawals_api
from custody.api.errors import register_error_handlers
from custody.api.ratelimit import init_rate_limits
from custody.assets import ASSETS
from custody.db import make_engine, make_session_factory
from custody.ledger.service import Ledger, wall_clock_ms
from exchange.api import blueprint as exchange_api
from strongroom.keystores import LazyKeystore, open_keystore
from strongroom.settings import Settings

MAX_REQUEST_BYTES = 4 * 1024 * 1024


def create_app(config: dict[str, Any] | None = None, settings: Settings | None = None) -> Flask:
    """Create the Strongroom Flask app. ``config`` overrides (e.g. DATABASE_URL in tests)."""
    settings = settings or Settings.from_env()
    app = Flask("strongroom")
    app.config.update(DATABASE_URL=settings.database_url, MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
                      JSON_SORT_KEYS=False)
    app.config.update(config or {})
    logging.basicConfig(level=settings.log_level)

    engine = make_engine(app.config["DATABASE_URL"])
    sessions = make_session_factory(engine)
    app.extensions["strongroom.engine"] = engine
    app.extensions["strongroom.sessions"] = sessions
    app.extensions["strongroom.ledger"] = Ledger(sessions, **_clock_override(app.config))
    # Tests pass a ready keystore in config; otherwise open the configured one on first use.
    app.extensions["strongroom.keystore"] = app.config.get("KEYSTORE") or LazyKeystore(
        lambda: open_keystore(settings))
    app.extensions["strongroom.settings"] = settings
    clock = app.config.get("CLOCK") or wall_clock_ms
    app.extensions["strongroom.clock"] = clock
    app.extensions["strongroom.access"] = AccessServices.build(
        sessions, app.extensions["strongroom.keystore"], app.extensions["strongroom.ledger"], clock,
        prices_usd_cents=app.config.get("PRICES_USD_CENTS"))

    register_error_handlers(app)
    for blueprint in (ledger_api.bp, access_api.bp, withdrawals_api.bp, policy_api.bp, openapi_api.bp):
        app.register_blueprint(blueprint)
    app.register_blueprint(audit_api.bp)
    app.register_blueprint(wallets_api.bp)
    app.extensions["strongroom.wallets"] = app.config.get("WALLETS")
    # Every chain's wallet runtime by chain name (Bitcoin next to Ethereum); jobs iterate over it.
    chains = dict(app.config.get("CHAIN_RUNTIMES") or {})
    if app.config.get("WALLETS") is not None:
        chains.setdefault(app.config["WALLETS"].adapter.chain, app.config["WALLETS"])
    app.extensions["strongroom.chains"] = chains
    if chains:
        from custody.bundles.terms import install_terms
        from strongroom.commands.wallets import bundle_chains

        # Approvers of cold withdrawals and refills bind the chain, network, wallet and fee cap.
        install_terms(bundle_chains(chains), app.extensions["strongroom.access"].withdrawals,
                      [runtime.treasury for runtime in chains.values()])
    exchange_api.init_app(app)
    init_rate_limits(app)
    _register_meta_routes(app)
    return app


def _clock_override(config: dict[str, Any]) -> dict[str, Any]:
    clock = config.get("CLOCK")
    return {} if clock is None else {"clock": clock}


def _register_meta_routes(app: Flask) -> None:
    @app.get("/api/v1/health")
    def health() -> ResponseReturnValue:
        """Report liveness and whether the database answers."""
        try:
            with app.extensions["strongroom.engine"].connect() as connection:
                connection.execute(text("SELECT 1"))
        except Exception:
            return jsonify({"status": "degraded", "database": "unreachable"}), 503
        seq, tip = app.extensions["strongroom.ledger"].head()
        return jsonify({"status": "ok", "database": "ok", "ledger": {"seq": seq, "head": tip}})

    @app.get("/api/v1/assets")
    def assets() -> ResponseReturnValue:
        """List registered assets and their decimals."""
        return jsonify({"assets": [
            {"code": a.code, "decimals": a.decimals, "name": a.name} for a in ASSETS.values()
        ]})
