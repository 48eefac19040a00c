"""Measuring the appliance: `invoke bench` (bench) and the JWK load client it and the VM checks
use (jwk_client)."""
