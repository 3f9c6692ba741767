"""What every response tells browsers, whoever makes it: the app (app.py's after-request
hook) or nginx in front of it (deploy/nginx.conf, which txstream/serve.py fills in from here).

Run nothing foreign, frame nothing, sniff nothing, send no referrer.
"""

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
NOSNIFF = "nosniff"
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": NOSNIFF,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
