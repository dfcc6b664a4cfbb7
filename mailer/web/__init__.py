"""The web app: public signup pages now, the admin and JSON API mounted beside them."""
