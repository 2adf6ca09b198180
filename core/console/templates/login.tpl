% rebase('layout', c=c, title=title)
% if logged_out:
<p class="flash ok" role="status">You are logged out.</p>
% end
% if error:
<p class="flash error" role="alert" id="login-error">{{error}}</p>
% end
<form method="post" action="{{c.base}}/login" class="login card">
  <input type="hidden" name="_csrf" value="{{token}}">
  <input type="hidden" name="next" value="{{target}}">
  % if has_users:
  <p>
    <label for="name">Name</label>
    <input id="name" name="name" type="text" autocomplete="username" value="{{name}}" autofocus>
    % if has_token:
    <span class="hint" id="name-hint">Leave it empty to log in with the admin token.</span>
    % end
  </p>
  % else:
  <input type="hidden" name="name" value="">
  % end
  <p>
    % if has_users and has_token:
    <label for="password">Password or admin token</label>
    % elif has_users:
    <label for="password">Password</label>
    % else:
    <label for="password">Admin token</label>
    % end
    <input id="password" name="password" type="password" autocomplete="current-password" required{{!'' if has_users else ' autofocus'}}>
  </p>
  <p><button type="submit">Log in</button></p>
</form>
