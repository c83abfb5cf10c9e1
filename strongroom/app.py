"""The application factory: wires settings, database, services and blueprints."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

from custody.api import access as access_api
from custody.api import audit as audit_api
from custody.api import compliance as compliance_api
from custody.api import freezes as freezes_api
from custody.api import halts as halts_api
from custody.api import ledger as ledger_api
from custody.api import openapi as openapi_api
from custody.api import policy as policy_api
from custody.api import wallets as wallets_api
from custody.api import withdrawals as withdrawals_api
from custody.api.body import StrictJSONProvider, check_request_body, keep_recursion_limit_sane
from custody.api.errors import RequestCode, error_body, register_error_handlers
from custody.api.ratelimit import init_rate_limits
from custody.assets import ASSETS
from custody.db import make_engine, make_session_factory
from custody.keystore import KeystoreError
from custody.ledger.service import Ledger, wall_clock_ms
from exchange.api import blueprint as exchange_api
from exchange.api import controls as exchange_controls_api
from exchange.api import marketdata as marketdata_api
from exchange.api import shardmode as exchange_shards
from strongroom import auth_fast, console, logs, metrics
from strongroom.keystores import LazyKeystore, open_keystore
from strongroom.settings import MAX_TRUSTED_PROXY_HOPS, Settings
from strongroom.trading_limits import KycTradingLimits
from strongroom.wiring import build_access_services

MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Ids in paths are database BIGINTs: a larger number names nothing, so the route does not match (404).
ID_MAX = 2**63 - 1
RETRY_AFTER_DATABASE_S = 5
log = logging.getLogger(__name__)


class BoundedIntegerConverter(IntegerConverter):
    """``<int:...>`` for database ids: 0..2**63-1, never a value the database cannot compare."""

    def __init__(self, map: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("max", ID_MAX)
        super().__init__(map, *args, **kwargs)


def create_app(config: dict[str, Any] | None = None, settings: Settings | None = None) -> Flask:
    """Create the Strongroom Flask app. ``config`` overrides (e.g. DATABASE_URL in tests)."""
    keep_recursion_limit_sane()
    settings = settings or Settings.from_env()
    app = Flask("strongroom")
    app.json = StrictJSONProvider(app)
    app.url_map.converters["int"] = BoundedIntegerConverter
    app.config.update(DATABASE_URL=settings.database_url, MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
                      JSON_SORT_KEYS=False)
    app.config.update(config or {})
    logging.basicConfig(level=settings.log_level)
    logs.configure(settings.log_level)
    logs.init_app(app)

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
    app.extensions["strongroom.access"] = build_access_services(
        sessions, app.extensions["strongroom.keystore"], app.extensions["strongroom.ledger"], clock,
        prices_usd_cents=app.config.get("PRICES_USD_CENTS"),
        travel_rule_threshold_usd_cents=app.config.get("TRAVEL_RULE_THRESHOLD_USD_CENTS"))
    # Scale-out mode: keys, nonces and KYC standings without database round trips (docs/scale-out.md).
    auth_fast.init_app(app)

    # KYC providers that answer by signed callback: {"name": secret bytes} (docs/compliance.md).
    kyc_secrets = app.config.get("KYC_PROVIDER_SECRETS") or {}
    app.extensions["strongroom.access"].kyc.provider_secrets = dict(kyc_secrets)
    register_error_handlers(app)
    _register_availability_handlers(app)
    for blueprint in (ledger_api.bp, access_api.bp, withdrawals_api.bp, policy_api.bp, openapi_api.bp):
        app.register_blueprint(blueprint)
    app.register_blueprint(audit_api.bp)
    app.register_blueprint(wallets_api.bp)
    app.register_blueprint(compliance_api.bp)
    app.register_blueprint(compliance_api.kyc_bp)
    app.register_blueprint(compliance_api.reports_bp)
    app.register_blueprint(compliance_api.trp_bp)
    _wire_travel_rule_exchange(app)
    app.register_blueprint(halts_api.bp)
    app.register_blueprint(freezes_api.bp)
    app.extensions["strongroom.wallets"] = app.config.get("WALLETS")
    # Every chain's wallet runtime by chain name (Bitcoin next to Ethereum); jobs iterate over it.
    chains = dict(app.config.get("CHAIN_RUNTIMES") or {})
    if app.config.get("WALLETS") is not None:
        chains.setdefault(app.config["WALLETS"].adapter.chain, app.config["WALLETS"])
    app.extensions["strongroom.chains"] = chains
    if chains:
        from custody.bundles.terms import install_terms
        from strongroom.runtimes.from_env import bundle_chains

        # Approvers of cold withdrawals and refills bind the chain, network, wallet and fee cap.
        install_terms(bundle_chains(chains), app.extensions["strongroom.access"].withdrawals,
                      [runtime.treasury for runtime in chains.values()])
    # The exchange venue lives in one process (its journal directory is locked): a pool of
    # stateless API workers runs with EXCHANGE_ENABLED off (docs/production.md).
    if app.config.get("EXCHANGE_ENABLED", True):
        # Orders are held to the caller's KYC tier and jurisdiction (docs/compliance.md).
        kyc = app.extensions["strongroom.access"].kyc
        app.extensions[exchange_api.LIMITS_EXTENSION] = KycTradingLimits(kyc, cache=auth_fast.cache_of(app))
        exchange_api.init_app(app)
        shards = app.extensions.get(exchange_shards.EXTENSION)
        if shards is not None:
            # One NATS connection and loop thread per process: the nonce store rides on the gateway's.
            auth_fast.share_with_shard_gateway(app, shards.get, shards.urls)
        # Tax reports tell funding from realised PnL by the venue's funding records (their clearing seqs).
        app.extensions[compliance_api.FUNDING_SEQS_EXTENSION] = _funding_seqs(app)
        exchange_controls_api.init_app(app)
        marketdata_api.init_app(app)
    console.init_app(app)
    init_rate_limits(app)
    metrics.init_app(app)
    _register_meta_routes(app)
    trust_proxies(app, app.config.get("TRUSTED_PROXY_HOPS", settings.trusted_proxy_hops))
    return app


def trust_proxies(app: Flask, hops: Any) -> None:
    """Believe the last ``hops`` proxies' X-Forwarded-For / -Proto (``TRUSTED_PROXY_HOPS``; 0: none).

    Behind an ingress every request comes from the proxy's address, so per-IP rate limits, API key
    IP allowlists and the security log would all see one client. With N trusted hops,
    ``request.remote_addr`` is the address the outermost trusted proxy saw: the Nth
    X-Forwarded-For entry from the right (each proxy appends its peer), so entries a client
    forges to the left are ignored. A request carrying fewer entries than N keeps the socket's
    address. Installed last, around every other middleware, so every reader sees the same address.
    """
    if isinstance(hops, bool) or not isinstance(hops, int) or not 0 <= hops <= MAX_TRUSTED_PROXY_HOPS:
        raise ValueError(f"TRUSTED_PROXY_HOPS was {hops!r}, must be an integer 0..{MAX_TRUSTED_PROXY_HOPS}")
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops)  # type: ignore[method-assign]


def _wire_travel_rule_exchange(app: Flask) -> None:
    """Counterparty VASPs from ``TRAVEL_RULE_VASPS`` ({lei: {"name", "url", "secret"}}): inquiries on."""
    vasps = app.config.get("TRAVEL_RULE_VASPS")
    access = app.extensions["strongroom.access"]
    if not vasps or access.travel_rule is None:
        return
    from custody.compliance.trp import CounterpartyVasp, TravelRuleExchange

    directory = {lei.upper(): CounterpartyVasp(lei.upper(), v["name"], v["url"], bytes(v["secret"]))
                 for lei, v in vasps.items()}
    exchange = TravelRuleExchange(access.sessions, access.travel_rule, access.withdrawals, directory,
                                  access.clock, timeout_ms=int(app.config.get("TRAVEL_RULE_TIMEOUT_MS",
                                                                              24 * 60 * 60 * 1000)))
    access.travel_rule.exchange = exchange
    app.extensions[compliance_api.TRP_EXTENSION] = exchange


def _funding_seqs(app: Flask) -> Any:
    exchange = app.extensions[exchange_api.EXTENSION]

    def seqs() -> frozenset[int]:
        with exchange.lock:
            return frozenset(e.seq for e in exchange.venue.funding_history)

    return seqs


def _clock_override(config: dict[str, Any]) -> dict[str, Any]:
    clock = config.get("CLOCK")
    return {} if clock is None else {"clock": clock}


def _register_availability_handlers(app: Flask) -> None:
    """Refuse hostile bodies early; answer 503 with a reason when a dependency is down."""

    @app.before_request
    def _check_body() -> None:
        if request.is_json:
            check_request_body(request.get_data(cache=True))
        else:
            keep_recursion_limit_sane()

    @app.after_request
    def _no_retry_after_on_success(response: Response) -> Response:
        # flask-limiter adds Retry-After to every response; it only means something on a refusal.
        if response.status_code not in (429, 503):
            response.headers.pop("Retry-After", None)
        return response

    @app.errorhandler(KeystoreError)
    def _keystore_unavailable(exc: KeystoreError) -> ResponseReturnValue:
        # Keys are the platform's, never the caller's: any keystore failure here is ours to fix.
        log.error("keystore unavailable: %s", exc)
        return jsonify(exc.to_dict()), 503

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    def _database_unavailable(exc: DBAPIError) -> ResponseReturnValue:
        log.error("database unavailable: %s", type(exc.orig).__name__ if exc.orig else type(exc).__name__)
        body = error_body(RequestCode.DATABASE_UNAVAILABLE, "the database is unreachable; try again later")
        return jsonify(body), 503, {"Retry-After": str(RETRY_AFTER_DATABASE_S)}


def _register_meta_routes(app: Flask) -> None:
    @app.get("/api/v1/health")
    def health() -> ResponseReturnValue:
        """Report liveness and each dependency: database, ledger head, keystore (503 if one is down)."""
        checks = component_checks(app)
        body: dict[str, Any] = {"status": "ok" if all(v == "ok" for v in checks.values()) else "degraded",
                                **checks}
        if checks["database"] == "ok":
            seq, tip = app.extensions["strongroom.ledger"].head()
            body["ledger"] = {"seq": seq, "head": tip}
        return jsonify(body), 200 if body["status"] == "ok" else 503

    @app.get("/api/v1/ready")
    def ready() -> ResponseReturnValue:
        """Report whether requests can be served: database reachable and migrated, keystore open."""
        checks = component_checks(app, schema=True)
        failing = sorted(name for name, value in checks.items() if value != "ok")
        if not failing:
            return jsonify({"ready": True, "checks": checks})
        body = error_body(RequestCode.NOT_READY, f"not ready: {', '.join(failing)}",
                          ready=False, checks=checks)
        return jsonify(body), 503

    @app.get("/api/v1/assets")
    def assets() -> ResponseReturnValue:
        """List registered assets and their decimals."""
        return jsonify({"assets": [
            {"code": a.code, "decimals": a.decimals, "name": a.name} for a in ASSETS.values()
        ]})


def component_checks(app: Flask, *, schema: bool = False) -> dict[str, str]:
    """Return ``{"database": ..., "keystore": ...[, "schema": ...]}``; "ok" or the reason."""
    checks = {"database": "ok", "keystore": "ok"}
    try:
        with app.extensions["strongroom.engine"].connect() as connection:
            connection.execute(text("SELECT 1"))
            if schema:
                checks["schema"] = _schema_state(connection)
    except DBAPIError:
        checks["database"] = "unreachable"
        if schema:
            checks["schema"] = "unknown"
    keystore = app.extensions["strongroom.keystore"]
    try:
        if isinstance(keystore, LazyKeystore):
            keystore.get()
    except KeystoreError as exc:
        checks["keystore"] = exc.error
    return checks


def _schema_state(connection: Any) -> str:
    from alembic.runtime.migration import MigrationContext

    from strongroom.migrate import head_revisions

    current = set(MigrationContext.configure(connection).get_current_heads())
    return "ok" if current == head_revisions() else "not_migrated"
