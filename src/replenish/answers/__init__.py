"""The customer's answers: approval requests with their deadline and reminder, announcements of automatic orders
with their cancel window, and the one-tap links that answer them."""
