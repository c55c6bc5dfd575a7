"""What the order actions say, built only from the order data and the shop's facts.

Every sentence here states either a field of the order (``orders.json``, or what
:mod:`.orders` wrote when a customer cancelled or started a return) or a fact from
``knowledge/faq.yml`` (its entry id is noted beside it). Pure functions, no I/O.
"""

from __future__ import annotations

from typing import Any

from .orders import RETURN_DAYS, Order, day_of

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")

# knowledge/faq.yml, shipping-times
DISPATCH = "We usually dispatch orders within 1 business day."
# knowledge/faq.yml, returns-refund-time
REFUND_TIME = ("Once your return reaches our warehouse, we refund you within 5–7 business days "
               "to your original payment method")


def day_text(timestamp: object) -> str | None:
    """``14 January 2026`` for an ISO timestamp or date, None when there is none."""
    day = day_of(timestamp)
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}" if day else None


def range_text(earliest: object, latest: object) -> str | None:
    """``18–19 February 2026`` (or ``28 February – 2 March 2026``) for a delivery window."""
    first, last = day_of(earliest), day_of(latest)
    if first is None or last is None:
        return day_text(earliest) or day_text(latest)
    if first == last:
        return day_text(first.isoformat())
    if (first.year, first.month) == (last.year, last.month):
        return f"{first.day}–{last.day} {MONTHS[last.month - 1]} {last.year}"
    if first.year == last.year:
        return f"{first.day} {MONTHS[first.month - 1]} – {last.day} {MONTHS[last.month - 1]} {last.year}"
    return f"{day_text(first.isoformat())} – {day_text(last.isoformat())}"


def money(amount: object, currency: object = "EUR") -> str:
    if not isinstance(amount, int | float):
        return "the full amount"
    return f"€{amount:.2f}" if currency in (None, "EUR") else f"{amount:.2f} {currency}"


def mask_email(email: object) -> str | None:
    """``a•••@example.com``: enough for a customer to recognise, not to harvest."""
    if not isinstance(email, str) or "@" not in email:
        return None
    name, _, domain = email.partition("@")
    return f"{name[:1]}•••@{domain}"


def items_text(items: object) -> str | None:
    """``1 × Harbor Runner (size 38, white), 2 × ...``"""
    if not isinstance(items, list) or not items:
        return None
    parts = []
    for item in items:
        if not isinstance(item, dict):
            continue
        size = str(item.get("size") or "")
        details = ", ".join(d for d in (
            size if size.lower() == "one size" else f"size {size}" if size else "",
            str(item.get("color") or "")) if d)
        parts.append(f"{item.get('quantity', 1)} × {item.get('name', item.get('product_id', 'item'))}"
                     + (f" ({details})" if details else ""))
    return ", ".join(parts) or None


def refund_text(order: Order) -> str | None:
    """A sentence about the order's refund, when it has one."""
    refund: Any = order.get("refund")
    if not isinstance(refund, dict):
        return None
    amount = money(refund.get("amount"), order.get("currency"))
    method = refund.get("method") or order.get("payment_method")
    if refund.get("status") == "refunded":
        when = day_text(refund.get("refunded_at"))
        return f"{amount} was refunded to your {method}" + (f" on {when}." if when else ".")
    # knowledge/faq.yml, order-cancellation-fee: the full amount back within 5–7 business days
    return (f"The full amount, {amount}, goes back to your original payment method ({method}) "
            f"within 5–7 business days.")


def status_text(order: Order) -> str:
    """The answer to "where is my order?": status, carrier and tracking, dates, items, total."""
    oid, status = order["id"], order.get("status")
    carrier, tracking = order.get("carrier"), order.get("tracking_number")
    parcel = f"{carrier}, tracking number {tracking}" if carrier and tracking else carrier or None
    if status == "placed":
        head = (f"Order {oid} was placed on {day_text(order.get('created_at'))} and hasn't shipped "
                f"yet. {DISPATCH} You can still cancel it free of charge until it ships.")
    elif status == "paid":
        paid = day_text(order.get("paid_at")) or day_text(order.get("created_at"))
        head = (f"Order {oid} was paid on {paid} with {order.get('payment_method')} and hasn't "
                f"shipped yet. {DISPATCH} You can still cancel it free of charge until it ships.")
    elif status == "shipped":
        head = f"Order {oid} shipped on {day_text(order.get('shipped_at'))}"
        head += f" with {parcel}." if parcel else "."
        estimate = order.get("estimated_delivery")
        if isinstance(estimate, dict):
            window = range_text(estimate.get("earliest"), estimate.get("latest"))
            if window:
                head += f" Expected delivery: {window}."
    elif status == "delivered":
        head = f"Order {oid} was delivered on {day_text(order.get('delivered_at'))}"
        head += f" ({parcel})." if parcel else "."
    elif status == "cancelled":
        head = f"Order {oid} was cancelled on {day_text(order.get('cancelled_at'))}."
    elif status == "return_started":
        head = (f"A return for order {oid} was started on {day_text(order.get('return_started_at'))}. "
                f"We email you a prepaid return label. {REFUND_TIME}.")
    elif status == "returned":
        received = day_text(order.get("return_received_at"))
        head = f"Order {oid} was returned" + (f": it reached our warehouse on {received}." if received
                                              else ".")
    else:
        head = f"Order {oid} has the status “{status}”."
    if status in ("cancelled", "returned") and (refund := refund_text(order)):
        head += f" {refund}"
    lines = [head]
    if items := items_text(order.get("items")):
        lines.append(f"Items: {items}.")
    if isinstance(order.get("total"), int | float):
        lines.append(f"Total: {money(order['total'], order.get('currency'))}.")
    return "\n".join(lines)


def cancelled_text(order: Order) -> str:
    """Confirmation of a cancellation this chat just made."""
    text = f"Done: order {order['id']} is cancelled, free of charge."  # faq.yml, order-cancellation-fee
    if refund := refund_text(order):
        text += f" {refund}"
    return text


def cancel_refused_text(order: Order, refusal: str) -> str | None:
    """Why the order can't be cancelled; None where the domain's ``utter_cancel_not_possible``
    (written for shipped orders) says it exactly."""
    oid = order["id"]
    if refusal == "shipped":
        return None
    if refusal == "cancelled":
        when = day_text(order.get("cancelled_at"))
        return f"Order {oid} is already cancelled" + (f" (since {when})." if when else ".")
    if refusal == "delivered":
        # faq.yml, order-cancel: shipped orders can't be cancelled but can be returned
        return (f"Order {oid} was delivered on {day_text(order.get('delivered_at'))}, so it can't be "
                f"cancelled any more. You can return it for free within {RETURN_DAYS} days of "
                f"delivery instead.")
    if refusal == "return_started":
        return f"A return for order {oid} is already under way, so there's nothing left to cancel."
    if refusal == "returned":
        return f"Order {oid} has already been returned, so there's nothing left to cancel."
    return f"Order {oid} can't be cancelled any more (status: {refusal})."


def return_started_text(order: Order) -> str:
    """What happens next after a return was started (faq.yml returns-how-to, returns-refund-time)."""
    email = mask_email(order.get("email"))
    label = (f"We're emailing a prepaid return label to {email}." if email
             else "We're emailing you a prepaid return label.")
    method = order.get("payment_method")
    refund = f"{REFUND_TIME} ({method})." if method else f"{REFUND_TIME}."
    return (f"Your return for order {order['id']} is started. {label} Pack the items, attach the "
            f"label and drop the parcel off with the carrier named on the label. Items must be "
            f"unworn and unwashed, with their tags still attached. {refund}")


def return_refused_text(order: Order, refusal: str) -> str:
    """Why a return can't start (faq.yml returns-policy, order-cancel, returns-faulty)."""
    oid = order["id"]
    if refusal == "not_delivered":
        if order.get("status") == "shipped":
            return (f"Order {oid} is on its way but hasn't been delivered yet. You can return items "
                    f"for free within {RETURN_DAYS} days of delivery, so once it arrives, just start "
                    f"the return here.")
        return (f"Order {oid} hasn't shipped yet, so there's nothing to return. You can cancel it "
                f"free of charge until it ships.")
    if refusal == "window_closed":
        return (f"Order {oid} was delivered on {day_text(order.get('delivered_at'))}, more than "
                f"{RETURN_DAYS} days ago, so its return period has ended. If an item is faulty, "
                f"contact our support team with your order number and a photo: the statutory "
                f"2-year warranty applies to all our products.")
    if refusal == "return_started":
        return (f"A return for order {oid} was already started on "
                f"{day_text(order.get('return_started_at'))}. We email you a prepaid return label.")
    if refusal == "returned":
        text = f"Order {oid} has already been returned."
        if refund := refund_text(order):
            text += f" {refund}"
        return text
    if refusal == "cancelled":
        return f"Order {oid} was cancelled, so there's nothing to return."
    return f"A return isn't possible for order {oid} (status: {order.get('status')})."
