"""The wizard's questions are the schema's prompts (overlay/usr/lib/ca-appliance/schema.yaml), not
copies: a prompt changed there is what the wizard asks, and no prompt text is written twice."""
from ca_appliance import schema

from image.config import GUEST_LIB


def test_no_prompt_of_the_schema_is_copied_into_the_wizard():
    source = (GUEST_LIB / "ca_appliance/wizard.py").read_text()
    prompts = {key: entry["prompt"] for key, entry in schema.KEYS.items() if entry.get("prompt")}
    assert len(prompts) >= 10
    # "Password" is also the review screen's label for the password line, which is not a question
    copied = [key for key, text in prompts.items()
              if key != "ca.password" and (f'"{text}"' in source or f'"  {text}"' in source)]
    assert copied == [], f"the wizard spells these prompts itself instead of schema.prompt(): {copied}"
    asked = [key for key in prompts if f'schema.prompt("{key}")' in source]
    assert set(asked) == set(prompts) - {"ca.password"}   # the password is asked twice, with its own words
