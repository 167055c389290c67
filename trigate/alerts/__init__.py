"""Alerts as LiteLLM's `general_settings.alerting` sends them: Slack and signed webhooks
for budgets, outages, slow requests, store or Redis trouble and a daily spend report."""
