"""The offers' commands of the ``omnicanal`` command line: the campaign catalogue and the
coupon codes (registered on :data:`omnicanal.cli.app`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from omnicanal.cli import app, err, fail, load_settings, out, print_json
from omnicanal.config import ConfigError

campaigns_app = typer.Typer(help="The campaign catalogue of the offers.", no_args_is_help=True)
app.add_typer(campaigns_app, name="campaigns")
coupons_app = typer.Typer(
    help="Coupon codes: check one as a till does, look one up in the ledger.",
    no_args_is_help=True,
)
app.add_typer(coupons_app, name="coupons")


# ---------------------------------------------------------------------------- campaigns
@campaigns_app.command("check")
def campaigns_check(
    path: Annotated[
        Path | None,
        typer.Argument(help="The catalogue (YAML or JSON); default: OMNICANAL_CAMPAIGNS_FILE."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the catalogue as JSON.")] = False,
) -> None:
    """Validate a campaign catalogue as the pipeline loads it: every mistake is named with its
    place (`$.campaigns[2].benefit.kind`). Exit code 2 when it does not load.

    The published JSON Schema (`schemas/json/campaign_catalogue.v1.schema.json`) lets editors
    check a catalogue as it is written."""
    from omnicanal.campaigns import CatalogueError, load_catalogue

    if path is None:
        configured = load_settings().campaigns_file
        if not configured:
            fail("give a catalogue file, or set OMNICANAL_CAMPAIGNS_FILE")
        path = Path(configured)
    try:
        cat = load_catalogue(path)
    except CatalogueError as e:
        fail(str(e))
    if as_json:
        import msgspec

        print_json(msgspec.to_builtins(cat))
        return
    t = Table("id", "trigger", "benefit", "channels", "valid", "wait", "enabled", title=str(path))
    for c in cat.campaigns:
        b = c.benefit
        benefit = (
            b.kind
            + (f" {b.value}" if b.value else "")
            + (f" {b.currency}" if isinstance(b.currency, str) else "")
        )
        t.add_row(
            c.id, c.trigger, benefit, ", ".join(c.channels), f"{c.valid_days} d",
            f"{c.wait_minutes} min", "yes" if c.enabled else "no",
        )  # fmt: skip
    out.print(t)
    out.print(f"{len(cat.campaigns)} campaign(s), catalogue version {cat.version}: OK")


# ---------------------------------------------------------------------------- coupons
@coupons_app.command("verify")
def coupons_verify(
    code: Annotated[str, typer.Argument(help="The code as typed (any case, hyphens or not).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check a code offline, as a till holding OMNICANAL_COUPON_KEY does: check symbol (a
    typing error), signature (a made-up code), expiry. It does not tell whether the code was
    issued or already used: `omnicanal coupons show` asks the ledger. Exit code 1 when the
    code is refused."""
    import time as _time

    from operators.coupons import CouponCodec, Refused, day_of

    try:
        codec = CouponCodec(load_settings().coupon_key_bytes())
    except ConfigError as e:
        fail(str(e))
    res = codec.verify(code, today=day_of(int(_time.time() * 1000)))
    doc = (
        {"ok": False, "reason": res.reason}
        if isinstance(res, Refused)
        else {"ok": True, "code": res.code, "expires": _day_iso(res.expiry_day)}
    )
    if as_json:
        print_json(doc)
    elif doc["ok"]:
        out.print(f"[green]valid[/]: {doc['code']}, redeemable until the end of {doc['expires']}")
    else:
        out.print(f"[red]refused[/]: {doc['reason']}")
    if not doc["ok"]:
        raise typer.Exit(1)


@coupons_app.command("show")
def coupons_show(
    code: Annotated[str, typer.Argument(help="The code as typed.")],
) -> None:
    """The ledger's record of a code: offer, customer, campaign, expiry, and whether, when,
    where and with which order it was redeemed. Exit code 1 when the ledger has no such code."""
    from operators.coupons import CouponCodec
    from state.coupons import CouponLedger
    from state.profiles import StateError, connect, redact_url

    s = load_settings()
    try:
        ledger = CouponLedger(
            connect(s.redis_url), s.redis_prefix, CouponCodec(s.coupon_key_bytes())
        )
        rec = ledger.lookup(code)
    except ConfigError as e:
        fail(str(e))
    except (StateError, OSError) as e:
        fail(f"Redis at {redact_url(s.redis_url)}: {e}")
    if rec is None:
        err.print("no such code in the ledger (never issued, mistyped, or past its retention)")
        raise typer.Exit(1)
    print_json(rec)


def _day_iso(day: int) -> str:
    from datetime import timedelta

    from operators.coupons import EPOCH

    return (EPOCH + timedelta(days=day)).date().isoformat()
