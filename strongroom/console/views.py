"""Console pages. Reads and actions go through the REST views in-process (`api.call`)."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from flask import Blueprint, Response, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from custody.assets import ASSETS, get_asset
from policies.results import PolicyError
from policies.roles import Permission
from strongroom.console import api, personal_api
from strongroom.console import bundles as cold_bundles
from strongroom.console.preferences import (
    CANDLE_INTERVALS,
    MARGIN_MODES,
    MAX_LEVERAGE,
    PANELS,
    THEMES,
    UNITS,
    Settings,
)
from strongroom.console.web import (
    accounts,
    check_csrf,
    clear_session_cookie,
    flash,
    load_session,
    may,
    notices,
    opens,
    page,
    plain_http_loopback,
    security_headers,
    session_token,
    set_session_cookie,
    stream_url,
    to_minor,
    units,
)

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static")
USDC_DECIMALS = 6
ORDER_TYPES = ("limit", "market", "stop_market", "stop_limit")
# Pages in the navigation: (endpoint, label, permissions that open it, admin role required).
NAVIGATION: tuple[tuple[str, str, tuple[Permission, ...], bool], ...] = (
    ("console.trade", "Trade", (Permission.TRADE,), False),
    ("console.options", "Options", (Permission.TRADE,), False),
    ("console.wallet", "Wallet", (Permission.WITHDRAW_REQUEST,), False),
    ("console.treasury", "Treasury", (Permission.WITHDRAW_APPROVE,), False),
    ("console.audit", "Audit", (Permission.AUDIT_READ,), False),
    ("console.admin", "Admin", (Permission.USERS_MANAGE,), False),
    ("console.markets", "Markets", (), True),
    ("console.keys", "API keys", (Permission.APIKEY_MANAGE_OWN,), False),
    ("console.alerts", "Alerts", (Permission.SETTINGS_MANAGE_OWN,), False),
    ("console.settings", "Settings", (Permission.SETTINGS_MANAGE_OWN,), False),
)
ROLE_NAMES = ("trader", "treasury", "auditor", "compliance", "admin")
SCOPE_NAMES = ("read", "trade", "withdraw")


@bp.before_request
def _before() -> None:
    load_session()
    check_csrf()
    user = g.console_user
    # The person's own settings shape every page (theme, units, panels, order defaults).
    g.preferences = Settings() if user is None else personal_api.settings_store().get(user.username)


@bp.after_request
def _after(response: Response) -> Response:
    return security_headers(response)


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> ResponseReturnValue:
    status = exc.code or 500
    return render_template("error.html", status=status, message=exc.description), status


@bp.app_context_processor
def _template_helpers() -> dict[str, Any]:
    nav = [(endpoint, label) for endpoint, label, perms, admin_only in NAVIGATION if opens(perms, admin_only)]
    # A background refresh (?partial=1, console.js) must not consume the notices of the next page.
    shown = (lambda: []) if request.args.get("partial") else notices
    return {"nav": nav, "units": units, "user": g.get("console_user"), "csrf": g.get("csrf", ""),
            "prefs": g.get("preferences") or Settings(),
            "notices": shown, "stream": stream_url() if g.get("console_user") else None}


def _refused(answer: api.Answer) -> None:
    flash(answer.message, "error")


def _back(endpoint: str, **values: Any) -> ResponseReturnValue:
    return redirect(url_for(endpoint, **values), code=303)


def _submit(send: Callable[[], api.Answer], done: Callable[[api.Answer], str],
            back: str, **values: Any) -> ResponseReturnValue:
    """Run one form action and go back to its page (303) with the outcome as a notice.

    ``send`` reads the form and makes the API call; a ValueError it raises (the form's own
    validation) is shown as is and nothing is called. A refusal shows the API's code and
    message; success shows ``done(answer)``.
    """
    try:
        answer = send()
    except ValueError as exc:
        flash(str(exc), "error")
    else:
        flash(done(answer), "ok") if answer.ok else _refused(answer)
    return _back(back, **values)


# ------------------------------------------------------------------ login


@bp.get("/")
def home() -> ResponseReturnValue:
    if g.console_user is None:
        return _back("console.login")
    for endpoint, _label, perms, admin_only in NAVIGATION:
        if opens(perms, admin_only):
            return _back(endpoint)
    return render_template("error.html", status=403, message="Your roles have no console page."), 403


@bp.route("/login", methods=["GET", "POST"])
def login() -> ResponseReturnValue:
    if request.method == "GET":
        return render_template("login.html", dev_cookie=plain_http_loopback())
    result = accounts().login(request.form.get("username", ""), request.form.get("password", ""),
                              request.form.get("code", "").strip(), request.remote_addr or "")
    if result.token is None:
        return render_template("login.html", error=result.refusal, dev_cookie=plain_http_loopback()), 401
    response = redirect(url_for("console.home"), code=303)
    set_session_cookie(response, result.token)
    return response


@bp.post("/logout")
def logout() -> ResponseReturnValue:
    token = session_token()
    if token:
        accounts().logout(token)
    response = redirect(url_for("console.login"), code=303)
    clear_session_cookie(response)
    return response


@bp.post("/stream-token")
@page(Permission.TRADE, Permission.LEDGER_READ_OWN, Permission.WITHDRAW_APPROVE)
def stream_token() -> ResponseReturnValue:
    """Return a single-use listen token for the private stream channels (the API's own endpoint)."""
    from flask import jsonify

    answer = api.call("POST", "/api/v1/exchange/stream-token")
    if not answer.ok:
        return jsonify({"error": answer.message}), answer.status
    return jsonify({"token": answer.body["token"], "expires_ms": answer.body["expires_ms"]})


# ------------------------------------------------------------------ trader


def _instruments() -> list[dict[str, Any]]:
    answer = api.call("GET", "/api/v1/exchange/instruments")
    return list(answer.body.get("instruments", [])) if answer.ok else []


@bp.get("/trade")
@page(Permission.TRADE)
def trade() -> ResponseReturnValue:
    instruments = _instruments()
    symbols = [i["symbol"] for i in instruments]
    symbol = request.args.get("symbol") or (symbols[0] if symbols else "")
    if symbol not in symbols and symbols:
        symbol = symbols[0]
    return render_template(
        "trade.html", symbol=symbol, instruments=instruments,
        instrument=next((i for i in instruments if i["symbol"] == symbol), None),
        orders=api.call("GET", "/api/v1/exchange/orders").body.get("orders", []),
        positions=_with_leverage(api.call("GET", "/api/v1/exchange/positions").body.get("positions", [])),
        closed=api.call("GET", "/api/v1/exchange/position-history",
                        query={"limit": 20}).body.get("closed", []),
        fills=_history("/api/v1/exchange/trade-history", "trades"),
        income=_history("/api/v1/exchange/income", "income"), stream=stream_url(),
        summary=api.call("GET", "/api/v1/exchange/account").body, order_types=ORDER_TYPES,
        new_order_id="c" + secrets.token_hex(6))


@bp.get("/options")
@page(Permission.TRADE)
def options() -> ResponseReturnValue:
    """The options chain: per underlying and expiry, calls and puts side by side by strike."""
    tickers = {t["symbol"]: t for t in api.call("GET", "/api/v1/market/ticker").body.get("tickers", [])}
    return render_template("options.html", chains=option_chains(_market_instruments(), tickers))


def option_chains(instruments: list[dict[str, Any]],
                  tickers: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Group listed options by (underlying, expiry); each strike row holds its call and its put."""
    chains: dict[tuple[str, int], dict[str, dict[str, Any]]] = {}
    for i in instruments:
        if i.get("kind") != "option" or i.get("strike") is None or (
                i.get("option_type") not in ("call", "put")):
            continue
        row = chains.setdefault((i["underlying"], int(i["expiry_ms"] or 0)), {}).setdefault(i["strike"], {})
        row[i["option_type"]] = dict(i, ticker=tickers.get(i["symbol"], {}))
    return [{"underlying": underlying, "expiry_ms": expiry_ms,
             "strikes": [{"strike": strike, **sides} for strike, sides in
                         sorted(rows.items(), key=lambda kv: Decimal(kv[0]))]}
            for (underlying, expiry_ms), rows in sorted(chains.items())]


def _with_leverage(positions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add each position's effective leverage: notional at the mark over its initial margin."""
    per_unit = {i["symbol"]: int(i["contracts_per_unit"]) for i in _market_instruments()}
    for p in positions:
        units_per = per_unit.get(p["symbol"])
        if units_per and p.get("initial_margin"):
            notional_minor = abs(int(p["size"])) * int(p["mark"]) // units_per
            p["leverage"] = f"{notional_minor * 10 // int(p['initial_margin']) / 10:.1f}x"
    return positions


def _history(path: str, key: str) -> list[dict[str, Any]]:
    answer = api.call("GET", path, query={"limit": 50})
    return list(reversed(answer.body.get(key, []))) if answer.ok else []


@bp.post("/trade/orders")
@page(Permission.TRADE)
def place_order() -> ResponseReturnValue:
    form = request.form
    symbol = form.get("symbol", "")
    kind = form.get("type", "limit")
    body: dict[str, Any] = {"symbol": symbol, "id": form.get("id", ""), "side": form.get("side", ""),
                            "type": kind, "tif": form.get("tif") or "GTC",
                            "margin_mode": form.get("margin_mode") or "cross",
                            "reduce_only": form.get("reduce_only") == "on"}

    def send() -> api.Answer:
        try:
            body["qty"] = int(form.get("qty", "0"))
        except ValueError:
            qty = form.get("qty", "")[:20]
            raise ValueError(f"quantity was {qty!r}, must be a whole number of lots") from None
        if kind in ("limit", "stop_limit"):
            body["price"] = to_minor(form.get("price", ""), USDC_DECIMALS, "price")
        if kind.startswith("stop"):
            body["trigger_price"] = to_minor(form.get("trigger_price", ""), USDC_DECIMALS, "trigger price")
        if kind == "market":
            body.pop("tif")
        return api.call("POST", "/api/v1/exchange/orders", body=body)

    def done(answer: api.Answer) -> str:
        return f"order {body['id']} placed: {', '.join(e['type'] for e in answer.body['events'])}"

    return _submit(send, done, "console.trade", symbol=symbol)


@bp.post("/trade/orders/<symbol>/<order_id>/cancel")
@page(Permission.TRADE)
def cancel_order(symbol: str, order_id: str) -> ResponseReturnValue:
    return _submit(lambda: api.call("DELETE", f"/api/v1/exchange/orders/{symbol}/{order_id}"),
                   lambda _: f"order {order_id} cancelled", "console.trade", symbol=symbol)


@bp.post("/trade/orders/<symbol>/<order_id>/amend")
@page(Permission.TRADE)
def amend_order(symbol: str, order_id: str) -> ResponseReturnValue:
    """Change a resting limit order's price and/or quantity (the API's PATCH; blank keeps a field)."""
    form = request.form

    def send() -> api.Answer:
        body: dict[str, Any] = {}
        if form.get("price", "").strip():
            body["price"] = to_minor(form.get("price", ""), USDC_DECIMALS, "price")
        qty = form.get("qty", "").strip()
        if qty:
            if not qty.isdigit() or len(qty) > 18:
                raise ValueError(f"quantity was {qty[:20]!r}, must be a whole number of lots")
            body["qty"] = int(qty)
        if not body:
            raise ValueError("give a new price or quantity")
        return api.call("PATCH", f"/api/v1/exchange/orders/{symbol}/{order_id}", body=body)

    def done(answer: api.Answer) -> str:
        return f"order {order_id} amended: {', '.join(e['type'] for e in answer.body['events'])}"

    return _submit(send, done, "console.trade", symbol=symbol)


@bp.post("/trade/collateral")
@page(Permission.TRADE)
def collateral() -> ResponseReturnValue:
    direction = "deposit" if request.form.get("direction") == "deposit" else "withdraw"
    symbol = request.form.get("symbol", "")
    amount = 0

    def send() -> api.Answer:
        nonlocal amount
        amount = to_minor(request.form.get("amount", ""), USDC_DECIMALS, "amount")
        return api.call("POST", f"/api/v1/exchange/collateral/{direction}", body={"amount": amount})

    return _submit(send, lambda _: f"collateral {direction}: {units('USDC', amount)} USDC",
                   "console.trade", symbol=symbol)


@bp.post("/trade/positions/<symbol>/leverage")
@page(Permission.TRADE)
def position_leverage(symbol: str) -> ResponseReturnValue:
    text = request.form.get("leverage", "").strip()

    def send() -> api.Answer:
        if not text.isdigit() or len(text) > 4:
            raise ValueError("leverage must be a whole number")
        return api.call("POST", f"/api/v1/exchange/positions/{symbol}/leverage",
                        body={"leverage": int(text),
                              "margin_mode": request.form.get("margin_mode") or "cross"})

    return _submit(send, lambda _: f"{symbol} leverage set to {text}x", "console.trade", symbol=symbol)


@bp.post("/trade/positions/<symbol>/margin")
@page(Permission.TRADE)
def position_margin(symbol: str) -> ResponseReturnValue:
    direction = "add" if request.form.get("direction") == "add" else "remove"

    def send() -> api.Answer:
        amount = to_minor(request.form.get("amount", ""), USDC_DECIMALS, "amount")
        return api.call("POST", f"/api/v1/exchange/positions/{symbol}/isolated-margin/{direction}",
                        body={"amount": amount})

    return _submit(send, lambda _: f"margin {direction}ed", "console.trade", symbol=symbol)


# ------------------------------------------------------------------ personal settings


@bp.get("/settings")
@page(Permission.SETTINGS_MANAGE_OWN)
def settings() -> ResponseReturnValue:
    return render_template("settings.html", themes=THEMES, units_choices=UNITS, panels=PANELS,
                           margin_modes=MARGIN_MODES, order_types=ORDER_TYPES,
                           intervals=CANDLE_INTERVALS, max_leverage=MAX_LEVERAGE)


@bp.post("/settings")
@page(Permission.SETTINGS_MANAGE_OWN)
def save_settings() -> ResponseReturnValue:
    """Save the settings form through the API's own endpoint (same validation, same codes)."""
    form = request.form

    def send() -> api.Answer:
        leverage = form.get("default_leverage", "").strip()
        if not leverage.isdigit() or len(leverage) > 4:
            raise ValueError(f"default leverage was {leverage[:20]!r}, must be a whole number")
        body = {"theme": form.get("theme", ""), "units": form.get("units", ""),
                "panels": form.getlist("panels"), "default_leverage": int(leverage),
                "default_margin_mode": form.get("default_margin_mode", ""),
                "default_order_type": form.get("default_order_type", ""),
                "candle_interval": form.get("candle_interval", "")}
        return api.call("POST", "/api/v1/settings", body=body)

    return _submit(send, lambda _: "settings saved", "console.settings")


# ------------------------------------------------------------------ alerts


@bp.get("/alerts")
@page(Permission.SETTINGS_MANAGE_OWN)
def alerts() -> ResponseReturnValue:
    """Your notifications (fired alerts), your rules, your webhook and its deliveries."""
    from strongroom.console.alerts import DIRECTIONS, KINDS, SOURCES

    hook = api.call("GET", "/api/v1/alert-webhook")
    return render_template(
        "alerts.html", kinds=KINDS, sources=SOURCES, directions=DIRECTIONS,
        notifications=api.call("GET", "/api/v1/notifications").body.get("notifications", []),
        rules=api.call("GET", "/api/v1/alerts").body.get("rules", []),
        webhook=hook.body.get("webhook") if hook.ok else None,
        deliveries=api.call("GET", "/api/v1/alert-webhook/deliveries").body.get("deliveries", []),
        symbols=[i["symbol"] for i in _instruments()])


@bp.post("/alerts")
@page(Permission.SETTINGS_MANAGE_OWN)
def create_alert() -> ResponseReturnValue:
    """Create a rule through the API (same validation and codes); blank fields are left out."""
    form = request.form
    kind = form.get("kind", "")
    fields = {"price_cross": ("symbol", "source", "direction", "price"), "margin_ratio": ("threshold_pct",),
              "liquidation_warning": ("distance_pct",), "funding": ("symbol",), "fill": ("symbol",)}

    def send() -> api.Answer:
        body: dict[str, Any] = {"kind": kind, "webhook": form.get("webhook") == "on"}
        for name in fields.get(kind, ()):
            value = form.get(name, "").strip()
            if not value:
                continue
            if name == "threshold_pct":
                body["threshold_ppm"] = _percent(value, 10_000)  # percent -> ppm
            elif name == "distance_pct":
                body["distance_bps"] = _percent(value, 100)  # percent -> basis points
            else:
                body[name] = value
        return api.call("POST", "/api/v1/alerts", body=body)

    return _submit(send, lambda a: f"alert {a.body['rule']['id']} created", "console.alerts")


def _percent(text: str, scale: int) -> int:
    """Parse a percentage with up to two decimals into ``scale`` units per percent."""
    value = to_minor(text, 2, "percentage")
    return value * scale // 100


@bp.post("/alerts/<int:rule_id>/delete")
@page(Permission.SETTINGS_MANAGE_OWN)
def delete_alert(rule_id: int) -> ResponseReturnValue:
    return _submit(lambda: api.call("DELETE", f"/api/v1/alerts/{rule_id}"),
                   lambda _: f"alert {rule_id} deleted", "console.alerts")


@bp.post("/alerts/webhook")
@page(Permission.SETTINGS_MANAGE_OWN)
def set_webhook() -> ResponseReturnValue:
    form = request.form
    return _submit(lambda: api.call("POST", "/api/v1/alert-webhook", mfa=form.get("code", "").strip(),
                                    body={"url": form.get("url", "").strip()}),
                   lambda a: ("webhook set; signing secret (shown once, store it now): "
                              f"{a.body['secret']}"), "console.alerts")


# ------------------------------------------------------------------ wallet


def _balances() -> list[dict[str, Any]]:
    rows = []
    for account in api.call("GET", "/api/v1/ledger/accounts").body.get("accounts", []):
        b = account["balance"]
        posted = int(b["credits_posted"]) - int(b["debits_posted"])
        rows.append({"asset": account["asset"], "kind": account["kind"], "posted": posted,
                     "held": int(b["debits_pending"]),
                     "available": posted - int(b["debits_pending"])})
    return rows


def _deposit_addresses() -> list[dict[str, Any]]:
    """Return this user's deposit address per configured chain, with a QR code (inline SVG)."""
    from flask import current_app

    from custody.wallets.codes import WalletError
    from strongroom.console.qr import qr_svg

    found = []
    for chain, runtime in sorted((current_app.extensions.get("strongroom.chains") or {}).items()):
        try:
            info = runtime.wallets.deposit_address(f"{chain}-deposits", g.console_user.username)
        except WalletError:
            continue  # the chain's deposit wallet is not set up
        found.append({"chain": chain, "address": info.address, "qr": qr_svg(info.address)})
    return found


@bp.get("/wallet")
@page(Permission.WITHDRAW_REQUEST)
def wallet() -> ResponseReturnValue:
    return render_template(
        "wallet.html", balances=_balances(), addresses=_deposit_addresses(),
        withdrawals=api.call("GET", "/api/v1/withdrawals", query={"limit": 50}).body.get("withdrawals", []),
        whitelist=api.call("GET", "/api/v1/whitelist").body.get("entries", []),
        assets=sorted(ASSETS), idempotency_key="w" + secrets.token_hex(16))


@bp.post("/wallet/withdrawals")
@page(Permission.WITHDRAW_REQUEST)
def withdraw() -> ResponseReturnValue:
    form = request.form

    def send() -> api.Answer:
        asset = get_asset(form.get("asset", ""))
        if asset is None:
            raise ValueError("choose an asset")
        amount = to_minor(form.get("amount", ""), asset.decimals, "amount")
        return api.call("POST", "/api/v1/withdrawals", mfa=form.get("code", "").strip(),
                        idempotency_key=form.get("idempotency_key", "")[:128],
                        body={"asset": asset.code, "amount": str(amount),
                              "destination": form.get("destination", "").strip()})

    def done(answer: api.Answer) -> str:
        w = answer.body["withdrawal"]
        return f"withdrawal {w['id']} of {units(w['asset'], w['amount'])} {w['asset']}: {w['state']}"

    return _submit(send, done, "console.wallet")


@bp.post("/wallet/withdrawals/<withdrawal_id>/cancel")
@page(Permission.WITHDRAW_REQUEST)
def cancel_withdrawal(withdrawal_id: str) -> ResponseReturnValue:
    return _submit(lambda: api.call("POST", f"/api/v1/withdrawals/{withdrawal_id}/cancel"),
                   lambda _: "withdrawal cancelled", "console.wallet")


@bp.post("/wallet/whitelist")
@page(Permission.WHITELIST_MANAGE_OWN)
def add_whitelist() -> ResponseReturnValue:
    form = request.form
    return _submit(lambda: api.call("POST", "/api/v1/whitelist", mfa=form.get("code", "").strip(),
                                    body={"asset": form.get("asset", ""),
                                          "address": form.get("address", "").strip(),
                                          "label": form.get("label", "")[:128]}),
                   lambda _: "address whitelisted; the policy's timelock starts now", "console.wallet")


# ------------------------------------------------------------------ treasury


@bp.get("/treasury")
@page(Permission.WITHDRAW_APPROVE)
def treasury() -> ResponseReturnValue:
    from strongroom.console.approvals import pending_with_digests

    wallets = []
    for chain in ("bitcoin", "ethereum"):
        # Treasury reads wallets (wallet.read), not the whole ledger: the newest reconciliation
        # has each wallet's on-chain balance next to what the ledger expects.
        report = api.call("GET", "/api/v1/wallets/reconciliation/latest", query={"chain": chain})
        if report.ok:
            wallets += [dict(line, chain=chain) for line in report.body.get("lines", [])]
    keys = api.call("GET", "/api/v1/approver-keys").body.get("approver_keys", [])
    bundles = _bundles() if may(Permission.WALLET_READ) else []
    cold = may(Permission.WALLET_MANAGE) and cold_bundles.available()
    refills = api.call("GET", "/api/v1/wallets/refills")
    return render_template(
        "treasury.html", pending=pending_with_digests(), wallets=wallets,
        approver_keys=[k for k in keys if not k.get("revoked_ms")],
        refills=refills.body.get("refills", []) if refills.ok else [], bundles=bundles, cold=cold,
        key_id="browser-" + secrets.token_hex(4))


def _bundles() -> list[dict[str, Any]]:
    """Return the newest cold bundles (no REST view lists them yet; read under wallet.read)."""
    from flask import current_app

    from strongroom.jobs import cold_transfers

    if not current_app.extensions.get("strongroom.chains"):
        return []
    return [view.to_json() for view in cold_transfers(current_app).recent(limit=50)]


def _step_up(code: str) -> str | None:
    """Check a fresh TOTP code of the person (the API's step-up); return the refusal, or None."""
    from flask import current_app

    if not code:
        return "mfa_required: this action needs a TOTP code"
    refusal = current_app.extensions["strongroom.access"].mfa.verify(g.console_user.username, code)
    return None if refusal is None else f"{int(refusal.code)} {refusal.code.name.lower()}: {refusal.message}"


@bp.post("/treasury/bundles/export")
@page(Permission.WALLET_MANAGE)
def export_bundle() -> ResponseReturnValue:
    """Export the bundle of an approved cold request and show its QR frames (the CLI's export)."""
    form = request.form
    refusal = _step_up(form.get("code", "").strip())
    if refusal is not None:
        flash(refusal, "error")
        return _back("console.treasury")
    try:
        exported = cold_bundles.export(form.get("kind", "withdrawal"), form.get("request_id", ""))
    except cold_bundles.BundleRefused as exc:
        flash(str(exc), "error")
        return _back("console.treasury")
    flash(f"bundle {exported.view.bundle_id} exported: carry its QR frames or file to the signer", "ok")
    return _back("console.bundle", bundle_id=exported.view.bundle_id)


def _bundle_or_404(bundle_id: str) -> tuple[dict[str, Any], bytes]:
    from werkzeug.exceptions import NotFound

    if not cold_bundles.available():
        raise NotFound("no chain is configured on this server")
    try:
        transfers = cold_bundles.service()
        return transfers.get(bundle_id).to_json(), transfers.bundle_bytes(bundle_id)
    except cold_bundles.REFUSALS:
        raise NotFound(f"no bundle {bundle_id[:80]}") from None


@bp.get("/treasury/bundles/<bundle_id>")
@page(Permission.WALLET_MANAGE)
def bundle(bundle_id: str) -> ResponseReturnValue:
    view, data = _bundle_or_404(bundle_id)
    return render_template("bundle.html", bundle=view, frames=cold_bundles.frames(data), size=len(data))


@bp.get("/treasury/bundles/<bundle_id>/bundle.json")
@page(Permission.WALLET_MANAGE)
def bundle_file(bundle_id: str) -> ResponseReturnValue:
    _view, data = _bundle_or_404(bundle_id)
    response = Response(data, mimetype="application/octet-stream")
    response.headers["Content-Disposition"] = "attachment; filename=bundle.json"
    return response


@bp.post("/treasury/bundles/import")
@page(Permission.WALLET_MANAGE)
def import_bundle() -> ResponseReturnValue:
    """Import a signed answer: one file, its frame files, or scanned frame lines (the CLI's import)."""
    refusal = _step_up(request.form.get("code", "").strip())
    if refusal is not None:
        flash(refusal, "error")
        return _back("console.treasury")
    limit = cold_bundles.MAX_IMPORT_BYTES + 1
    blobs = [f.read(limit) for f in request.files.getlist("files") if f.filename]
    scanned = request.form.get("frames", "")[:limit]
    if scanned.strip():
        blobs.append(scanned.encode("utf-8"))
    try:
        view = cold_bundles.import_signed(blobs)
    except cold_bundles.BundleRefused as exc:
        flash(f"signed answer refused, nothing stored or broadcast: {exc}", "error")
        return _back("console.treasury")
    flash(f"signed answer for bundle {view['bundle_id']} accepted: {view['state']}"
          + (f", transaction {view['txid']}" if view.get("txid") else ""), "ok")
    return _back("console.treasury")


@bp.post("/treasury/device")
@page(Permission.WITHDRAW_APPROVE)
def register_device() -> ResponseReturnValue:
    form = request.form
    return _submit(lambda: api.call("POST", "/api/v1/approver-keys", mfa=form.get("code", "").strip(),
                                    body={"key_id": form.get("key_id", ""),
                                          "public_key": form.get("public_key", ""), "scheme": "ed25519"}),
                   lambda _: "this browser is now one of your approval devices", "console.treasury")


@bp.post("/treasury/withdrawals/<withdrawal_id>/approve")
@page(Permission.WITHDRAW_APPROVE)
def approve(withdrawal_id: str) -> ResponseReturnValue:
    from strongroom.console.approvals import signed_approval

    form = request.form

    def send() -> api.Answer:
        try:
            approval = signed_approval(withdrawal_id, g.console_user.username, form)
        except PolicyError as exc:
            raise ValueError(str(exc)) from None
        return api.call("POST", f"/api/v1/withdrawals/{withdrawal_id}/approvals",
                        mfa=form.get("code", "").strip(),
                        body={"approval": base64.b64encode(approval).decode("ascii")})

    return _submit(send, lambda a: f"approved: withdrawal is now {a.body['withdrawal']['state']}",
                   "console.treasury")


@bp.post("/treasury/withdrawals/<withdrawal_id>/reject")
@page(Permission.WITHDRAW_APPROVE)
def reject(withdrawal_id: str) -> ResponseReturnValue:
    form = request.form
    return _submit(lambda: api.call("POST", f"/api/v1/withdrawals/{withdrawal_id}/reject",
                                    mfa=form.get("code", "").strip(),
                                    body={"reason": form.get("reason", "")[:256]}),
                   lambda _: "withdrawal rejected; the hold is released", "console.treasury")


# ------------------------------------------------------------------ auditor


@bp.get("/audit")
@page(Permission.AUDIT_READ)
def audit() -> ResponseReturnValue:
    checkpoints = api.call("GET", "/api/v1/audit/checkpoints").body.get("checkpoints", [])
    report = api.call("GET", "/api/v1/audit/reserves/report")
    log = api.call("GET", "/api/v1/security-log", query={"limit": 200}).body.get("events", [])
    keys = api.call("GET", "/api/v1/audit/keys")
    owner, asset = request.args.get("owner", "")[:64], request.args.get("asset", "")[:16]
    proof_json, proof_error = "", None
    if owner and asset and report.ok:
        proof = api.call("GET", f"/api/v1/audit/reserves/snapshots/{int(report.body['snapshot'])}/proof",
                         query={"owner": owner, "asset": asset})
        proof_json = json.dumps(proof.body, indent=2) if proof.ok else ""
        proof_error = None if proof.ok else proof.message
    return render_template("audit.html", checkpoints=list(reversed(checkpoints))[:50],
                           report=report.body if report.ok else None,
                           report_error=None if report.ok else report.message,
                           events=list(reversed(log))[:100], proof_owner=owner, proof_asset=asset,
                           proof_json=proof_json, proof_error=proof_error,
                           keys_json=json.dumps(keys.body, indent=2) if keys.ok else "")


# ------------------------------------------------------------------ admin


@bp.get("/admin")
@page(Permission.USERS_MANAGE)
def admin() -> ResponseReturnValue:
    from flask import current_app

    from strongroom.app import component_checks

    return render_template(
        "admin.html", users=api.call("GET", "/api/v1/users").body.get("users", []), roles=ROLE_NAMES,
        keys=api.call("GET", "/api/v1/api-keys").body.get("keys", []),
        instruments=_market_instruments(), health=component_checks(current_app))


def _market_instruments() -> list[dict[str, Any]]:
    answer = api.call("GET", "/api/v1/market/instruments")
    return list(answer.body.get("instruments", [])) if answer.ok else []


@bp.post("/admin/users")
@page(Permission.USERS_MANAGE)
def create_user() -> ResponseReturnValue:
    form = request.form
    roles = [r for r in form.getlist("roles") if r in ROLE_NAMES]
    tier_text = form.get("kyc_tier", "0").strip()
    tier = int(tier_text) if tier_text.isdigit() and len(tier_text) < 4 else -1
    return _submit(lambda: api.call("POST", "/api/v1/users", mfa=form.get("code", "").strip(),
                                    body={"username": form.get("username", "").strip(), "roles": roles,
                                          "kyc_tier": tier}),
                   lambda a: (f"user {a.body['user']['username']} created; first API key "
                              f"{a.body['key']['key_id']} secret (shown once): {a.body['secret']}"),
                   "console.admin")


@bp.get("/keys")
@page(Permission.APIKEY_MANAGE_OWN)
def keys() -> ResponseReturnValue:
    return render_template("keys.html", keys=api.call("GET", "/api/v1/api-keys").body.get("keys", []),
                           scopes=SCOPE_NAMES)


@bp.post("/keys")
@page(Permission.APIKEY_MANAGE_OWN)
def create_key() -> ResponseReturnValue:
    form = request.form
    return _submit(lambda: api.call("POST", "/api/v1/api-keys", mfa=form.get("code", "").strip(),
                                    body={"scopes": [s for s in form.getlist("scopes") if s in SCOPE_NAMES],
                                          "label": form.get("label", "")[:128]}),
                   lambda a: (f"key {a.body['key']['key_id']} created; secret (shown once, store it now): "
                              f"{a.body['secret']}"),
                   "console.keys")


@bp.post("/keys/<key_id>/revoke")
@page(Permission.APIKEY_MANAGE_OWN)
def revoke_key(key_id: str) -> ResponseReturnValue:
    return _submit(lambda: api.call("POST", f"/api/v1/api-keys/{key_id}/revoke",
                                    mfa=request.form.get("code", "").strip()),
                   lambda _: f"key {key_id} revoked", "console.keys")


@bp.post("/admin/users/<username>/disable")
@page(Permission.USERS_MANAGE)
def disable_user(username: str) -> ResponseReturnValue:
    def done(_: api.Answer) -> str:
        accounts().end_sessions_of(username)
        return f"{username} disabled: keys stop working, console sessions ended"

    return _submit(lambda: api.call("POST", f"/api/v1/users/{username}/disable",
                                    mfa=request.form.get("code", "").strip()), done, "console.admin")


# ------------------------------------------------------------------ markets (admin)

MARKET_MODES = ("open", "cancel_only", "halted")
MAX_HALT_MINUTES = 7 * 24 * 60


@bp.get("/markets")
@page(admin_only=True)
def markets() -> ResponseReturnValue:
    listed = {i["symbol"]: i for i in _market_instruments()}
    answer = api.call("GET", "/api/v1/exchange/admin/markets")
    rows = [dict(m, instrument=listed.get(m["symbol"], {})) for m in answer.body.get("markets", [])]
    return render_template("markets.html", markets=rows, modes=MARKET_MODES,
                           error=None if answer.ok else answer.message)


def _minutes(text: str) -> int:
    """Parse an optional duration in whole minutes (blank: no end); ValueError says why."""
    if not text.strip():
        return 0
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_HALT_MINUTES:
        raise ValueError(f"duration was {text[:20]!r}, must be 1 to {MAX_HALT_MINUTES} minutes or blank")
    return int(text)


@bp.post("/markets/<symbol>/status")
@page(admin_only=True)
def market_status(symbol: str) -> ResponseReturnValue:
    form = request.form

    def send() -> api.Answer:
        mode = form.get("mode", "")
        if mode not in MARKET_MODES:
            raise ValueError(f"mode was {mode[:20]!r}, must be one of {', '.join(MARKET_MODES)}")
        minutes = _minutes(form.get("minutes", "")) if mode != "open" else 0
        body: dict[str, Any] = {"mode": mode, "reason": form.get("reason", "").strip()[:120]}
        if minutes:
            body["until_ms"] = _server_now_ms() + minutes * 60_000
        return api.call("POST", f"/api/v1/exchange/admin/markets/{symbol}/status",
                        mfa=form.get("code", "").strip(), body=body)

    def done(answer: api.Answer) -> str:
        until = f" until {answer.body['until_ms']} ms" if answer.body.get("until_ms") else ""
        return f"{symbol} is now {answer.body['mode'].replace('_', '-')}{until}"

    return _submit(send, done, "console.markets")


@bp.post("/markets/<symbol>/breaker")
@page(admin_only=True)
def market_breaker(symbol: str) -> ResponseReturnValue:
    form = request.form

    def send() -> api.Answer:
        body = {}
        for field in ("max_move_bps", "window_ms", "cooldown_ms"):
            text = form.get(field, "").strip() or "0"
            if not text.isdigit() or len(text) > 12:
                raise ValueError(f"{field} was {text[:20]!r}, must be a whole number")
            body[field] = int(text)
        return api.call("POST", f"/api/v1/exchange/admin/markets/{symbol}/breaker",
                        mfa=form.get("code", "").strip(), body=body)

    def done(answer: api.Answer) -> str:
        breaker = answer.body.get("breaker")
        if not breaker:
            return f"{symbol}: circuit breaker removed"
        return f"{symbol}: circuit breaker at {breaker['max_move_bps']} bps over {breaker['window_ms']} ms"

    return _submit(send, done, "console.markets")


def _server_now_ms() -> int:
    from flask import current_app

    return int(current_app.extensions["strongroom.clock"]())


# ------------------------------------------------------------------ PWA


@bp.get("/manifest.webmanifest")
def manifest() -> ResponseReturnValue:
    response = bp.send_static_file("manifest.webmanifest")
    response.mimetype = "application/manifest+json"
    return response


@bp.get("/sw.js")
def service_worker() -> ResponseReturnValue:
    # Served from /console/ so its scope is the whole console (an offline shell, no data cached).
    response = bp.send_static_file("sw.js")
    response.headers["Service-Worker-Allowed"] = "/console/"
    return response
