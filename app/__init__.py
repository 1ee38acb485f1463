"""The demo page: a Streamlit client of the captioning service's REST API."""
