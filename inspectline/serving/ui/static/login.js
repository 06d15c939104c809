// Sign in: check the token against GET /v1/session, keep it in this tab, go where the user was headed.
import { api, session } from "./common.js";

const form = document.getElementById("login");
const error = document.getElementById("login-error");
const flash = session.flash();
if (flash) {
  error.textContent = flash;
  error.hidden = false;
}
form.elements.reviewer.value = session.reviewer();

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  session.save(form.elements.token.value.trim(), form.elements.reviewer.value.trim());
  try {
    await api("/v1/session", { login: false });
  } catch (failure) {
    session.signOut();
    error.textContent = `Not signed in: ${failure.message}`;
    error.hidden = false;
    return;
  }
  const next = new URLSearchParams(location.search).get("next") ?? "";
  location.assign(next.startsWith("/ui/") && !next.startsWith("/ui/login") ? next : "/ui/lines");
});
document.body.dataset.ready = "1";
