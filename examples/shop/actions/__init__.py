"""Custom actions of the Northwind Threads demo shop, written with plain rasa-sdk.

Serve them with rasa-sdk's own action server, from ``examples/shop/``::

    DESKMATE_ACTIONS_REDIS_URL=redis://127.0.0.1:6379/0 python -m rasa_sdk --actions actions

or let deskmate run them in its own process (``bot.actions.InProcessActions``).
Orders live in Redis (see :mod:`actions.orders`); the replies (see
:mod:`actions.replies`) state only order data and facts from ``knowledge/``.
``action_recommend_products`` is built into deskmate's engine, not defined here.
"""
